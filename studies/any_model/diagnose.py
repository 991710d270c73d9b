"""Why part 1's students lose: two measurements on each finished run, on the held-out images only.

1. Crop context. Training shows the student 48x48 LR crops, inference whole images. A network that is not purely
   local (SAFMNv3's pooled modulation, RLFN's strided ESA branch) computes something else on a crop than on the
   same pixels inside the whole image, so a student could learn to fix crop-only behaviour. Measured: the
   student's Y-PSNR change over its base on the centres of non-overlapping 48x48 crops (an 8-pixel LR margin left
   out), once with every crop run alone and once cut from the whole-image output. Equal changes: the crop
   context is not what the student got wrong.
2. Distance to the teacher. Mean |SR - teacher SR| (grey levels) of the base and of the student to the teacher the
   run learned from, over the first 12 held-out images and the first 12 BSD200 training images of the split:
   whether training moved the student towards its teacher at all.
3. bf16 noise. Mean |SR under bf16 autocast - SR in fp32| of the base on the same 12 held-out images: how much of
   the base-to-teacher distance a bf16 training forward can resolve at all.

    python studies/any_model/diagnose.py [NAME ...]   # default: every finished run; results/diagnose.json
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import torch

from dsclora.data.images import read_uint8_rgb, to_tensor
from dsclora.data.imresize import imresize
from dsclora.devices import cpu_model
from dsclora.fs import atomic_write
from dsclora.measure.metrics import rgb_to_y
from dsclora.models.ensemble import SelfEnsemble
from dsclora.weights.load import load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
CROP, MARGIN = 48, 8  # the training patch; LR pixels left out at each crop edge
TEACHER_IMAGES = 12


def split_images(part: str, scale: int, limit: int | None = None) -> list[tuple[np.ndarray, torch.Tensor]]:
    """(HR cropped to a multiple of the scale, its MATLAB-bicubic uint8 LR as a tensor) per image of one part of
    the split (``val``: held out; ``train_bsd``: trained on)."""
    pairs = []
    for path in sorted((REPO / "runs" / "teacher_choice" / "split" / part).iterdir())[:limit]:
        hr = read_uint8_rgb(path)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        lr = imresize(hr.astype(np.float64) / 255, 1 / scale)
        pairs.append((hr, to_tensor(np.clip(np.round(lr * 255), 0, 255).astype(np.uint8))))
    return pairs


def _squared_errors(sr: torch.Tensor, hr: np.ndarray) -> float:
    """Mean squared Y error (grey levels) of a [0, 1] SR patch against its uint8 HR patch."""
    out = np.round(sr.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    return float(((rgb_to_y(out) - rgb_to_y(hr)) ** 2).mean())


def crop_regimes(net, pairs, scale: int) -> dict[str, float]:
    """Y-PSNR over all crop centres, each crop run alone ("crop") and cut from the whole image ("whole")."""
    errors: dict[str, list[float]] = {"crop": [], "whole": []}
    inner = slice(MARGIN * scale, (CROP - MARGIN) * scale)
    for hr, x in pairs:
        whole = net(x)
        for i in range(0, x.shape[2] - CROP + 1, CROP):
            for j in range(0, x.shape[3] - CROP + 1, CROP):
                rows = slice((i + MARGIN) * scale, (i + CROP - MARGIN) * scale)
                cols = slice((j + MARGIN) * scale, (j + CROP - MARGIN) * scale)
                alone = net(x[:, :, i : i + CROP, j : j + CROP])[:, :, inner, inner]
                errors["crop"].append(_squared_errors(alone, hr[rows, cols]))
                errors["whole"].append(_squared_errors(whole[:, :, rows, cols], hr[rows, cols]))
    return {k: 10 * float(np.log10(255**2 / np.mean(v))) for k, v in errors.items()}


def distance(net, other, pairs) -> float:
    """Mean |net SR - other SR| in grey levels."""
    return float(np.mean([(net(x) - other(x)).abs().mean().item() * 255 for _, x in pairs]))


def bf16_noise(net, pairs) -> float:
    """Mean |SR under bf16 autocast - SR in fp32| in grey levels."""

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return net(x).float()

    return distance(net, autocast, pairs)


def diagnose(name: str, run: dict) -> dict:
    config = run["config"]
    loaded = load(config["model"]["base"])
    scale, base = loaded.scale, loaded.runnable()
    student = load(next(f for f in run["files"] if f.endswith(".yaml"))).runnable()
    teacher_spec = config["model"]["teacher"]
    ensemble = config["loss"]["teacher_ensemble"]
    teacher = SelfEnsemble(load(teacher_spec).runnable() if teacher_spec else base, ensemble)
    pairs = split_images("val", scale)
    few = {"held_out": pairs[:TEACHER_IMAGES], "train": split_images("train_bsd", scale, TEACHER_IMAGES)}
    with torch.inference_mode():
        regimes = {"base": crop_regimes(base, pairs, scale), "student": crop_regimes(student, pairs, scale)}
        far = {
            f"{who}_{part}": distance(net, teacher, few[part])
            for who, net in (("base", base), ("student", student))
            for part in few
        }
        noise = bf16_noise(base, few["held_out"])
    change = {k: regimes["student"][k] - regimes["base"][k] for k in ("crop", "whole")}
    print(
        f"{name}: student - base on crop centres, crops alone {change['crop']:+.4f} dB, cut from whole images "
        f"{change['whole']:+.4f} dB; |SR - teacher| held out {far['base_held_out']:.3f} -> "
        f"{far['student_held_out']:.3f}, trained on {far['base_train']:.3f} -> {far['student_train']:.3f}; "
        f"base bf16 noise {noise:.3f} grey levels",
        flush=True,
    )
    return {"crop_psnr_y": regimes, "change_db": change, "l1_to_teacher_grey_levels": far, "base_bf16_noise": noise}


def summary() -> list[str]:
    """docs/results.md's lines on the measurements, if they have been made."""
    path = HERE / "results" / "diagnose.json"
    if not path.is_file():
        return []
    found = json.loads(path.read_text())
    rows = []
    for name, r in found["runs"].items():
        far = r["l1_to_teacher_grey_levels"]
        rows.append(
            f"| {name} | {r['change_db']['crop']:+.4f} | {r['change_db']['whole']:+.4f} "
            f"| {far['base_held_out']:.3f} -> {far['student_held_out']:.3f} "
            f"| {far['base_train']:.3f} -> {far['student_train']:.3f} | {r['base_bf16_noise']:.3f} |"
        )
    return [
        *textwrap.wrap(
            "Why the students lose (`studies/any_model/diagnose.py`, held-out images, "
            f"{found['machine']}): the change over the base on the centres of 48x48 crops, each crop run alone and cut "
            "from the whole-image output (equal: crop context, which training sees and inference does not, is not "
            "what the student got wrong), how far training moved the SR towards the teacher's (mean absolute "
            "difference, grey levels, on held-out and on training images) and how far the base's bf16-autocast forward "
            "is from its fp32 one (the noise a bf16 training step sees).",
            width=115,
        ),
        "",
        "| run | crop centres, crops alone | crop centres, whole image | SR - teacher, held out: base -> student "
        "| SR - teacher, trained on | base bf16 - fp32 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="finished runs (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)
    finished = {
        p.stem: json.loads(p.read_text())
        for p in sorted((HERE / "results").glob("*.json"))
        if not p.stem.startswith(("ref_", "diagnose"))
    }
    out = {"machine": cpu_model(), "threads": torch.get_num_threads(), "runs": {}}
    for name in args.names or finished:
        out["runs"][name] = diagnose(name, finished[name])
    with atomic_write(HERE / "results" / "diagnose.json") as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
