"""Training: the recipes end to end, what learns, resume after SIGKILL, DDP equivalence, bad configs.

Runs on photos generated from scikit-image's wheel and on the embedded model as base, so it needs no
workspace data: these tests run in any clone.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsclora.cli import main
from dsclora.data.images import to_tensor
from dsclora.data.patches import PatchDataset, PositionSampler, training_images
from dsclora.errors import DscloraError
from dsclora.models.ensemble import SelfEnsemble
from dsclora.models.span import SPAN, SpanConfig
from dsclora.train.config import load_config
from dsclora.train.logger import Logger
from dsclora.train.loop import Trainer
from dsclora.weights.checkpoints import read_checkpoint, read_train_state
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from dsclora.weights.sources.span import save
from support import REPO, lr_photos, make_benchmark, photo_crops

TINY_DSCLORA = REPO / "configs" / "dsclora_x4_tiny.yaml"
TINY_ENS = REPO / "configs" / "dsclora_x4_ens_tiny.yaml"
TINY_SPAN = REPO / "configs" / "span_x4_tiny.yaml"


@pytest.fixture(scope="session")
def photo_folders(tmp_path_factory: pytest.TempPathFactory, sample_photo) -> tuple[Path, Path]:
    """(HR folder of six 128x128 crops, LR folder of four 40x36 crops) of real photos."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    hr, lr = root / "hr", root / "lr"
    hr.mkdir()
    lr.mkdir()
    photos = [sample_photo, data.coffee(), data.chelsea()]
    for i, photo in enumerate(photos):
        for j, (y, x) in enumerate(((40, 60), (150, 170))):
            Image.fromarray(photo[y : y + 128, x : x + 128]).save(hr / f"p{i}{j}.png")
        Image.fromarray(photo[200:236, 100:140]).save(lr / f"l{i}.png")
    Image.fromarray(data.astronaut()[300:336, 300:340]).save(lr / "l9.png")
    return hr, lr


def overrides(folders: tuple[Path, Path], out: Path, *extra: str, lr_only: bool = False) -> list[str]:
    hr, lr = folders
    data = [f"data.train_lr=[{lr}]"] if lr_only else []
    return [f"data.train=[{hr}]", *data, "data.val=[]", f"run.output={out}", "run.threads=1", *extra]


def ens_overrides(folders: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return overrides(folders, out, *extra, lr_only=True)


def fixed_batch(config, n: int = 8) -> dict[str, torch.Tensor]:
    images, _ = training_images(config.data.train, [], config.data.patch, 4)
    dataset = PatchDataset(images, 4, config.data.patch, seed=123)
    samples = [dataset[k] for k in range(n)]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def test_paper_recipe_learns_only_lora_and_merges(tmp_path: Path, photo_folders) -> None:
    config = load_config(TINY_DSCLORA, overrides(photo_folders, tmp_path / "run", "run.steps=30", "optim.ema_decay=0"))
    trainer = Trainer(config, quiet=True)
    teacher_state = {k: v.clone() for k, v in trainer.teacher.module.state_dict().items()}
    batch = fixed_batch(config)
    with torch.no_grad():
        before = trainer.losses(batch)
    assert before["ts"].item() == 0 and before["ad"].item() < 1e-6  # the student starts as its teacher
    assert abs(before["loss"].item() - 0.5 * before["rec"].item()) < 1e-7  # λ1 = 0.5 (FAKD), by hand
    summary = trainer.run()
    # Only LoRA factors moved: every base weight and bias is bit-identical to the teacher's.
    student_state = trainer.student.state_dict()
    for key, value in teacher_state.items():
        assert torch.equal(student_state[key], value), key
    changed = [k for k, v in student_state.items() if k.endswith("lora_B") and v.abs().sum() > 0]
    assert len(changed) == 20
    # The merged result loads through the loader as a plain SPAN and equals the student.
    loaded = load(summary["final_model"])
    merged = loaded.module
    assert (loaded.arch, merged.deploy, merged.config.channels) == ("span", True, 26)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert (merged(x) - trainer.student.eval()(x)).abs().max().item() <= 1e-5
    assert (tmp_path / "run" / "train.csv").read_text().startswith("step,lr,rec,ts,ad,loss")


def test_ensemble_recipe_lowers_its_loss_and_moves_the_student(tmp_path: Path, photo_folders) -> None:
    config = load_config(TINY_ENS, ens_overrides(photo_folders, tmp_path / "ens", "run.steps=40", "optim.ema_decay=0"))
    trainer = Trainer(config, quiet=True)
    dataset = trainer._dataset()
    assert len(dataset.images) == 10 and dataset.targets is not None and not dataset.with_hr
    samples = [dataset[k] for k in range(16)]
    batch = {key: torch.stack([s[key] for s in samples]) for key in ("lr", "target")}
    assert set(samples[0]) == {"lr", "target"}  # no HR is read: the recipe has no HR term
    with torch.no_grad():
        before = trainer.losses(batch)["ts"].item()
    assert before > 0  # the ensemble differs from the single pass the student starts as
    summary = trainer.run()
    with torch.no_grad():
        after = trainer.losses(batch)["ts"].item()
    assert after < before
    merged = load(summary["final_model"]).module
    base = load(None).module
    x = batch["lr"][:2]
    with torch.no_grad():
        assert (merged(x) - base(x)).abs().max().item() > 1e-4  # the merged student is not its base any more


def test_a_wider_teacher_supervises_through_cached_targets_in_bf16(tmp_path: Path, photo_folders) -> None:
    """The shipped recipe's shape: a teacher of another width (C = 28, its x8 ensemble) gives the targets, the
    student trains under bf16 autocast and still merges into a plain C = 26 SPAN."""
    wide = SPAN(SpanConfig(channels=28), deploy=True).eval()
    with torch.no_grad():
        for p in wide.parameters():
            p.mul_(0.5)  # a random network whose outputs stay in range
    save(wide, tmp_path / "wide.safetensors")
    extra = [f"model.teacher={tmp_path / 'wide.safetensors'}", "optim.amp=bf16", "run.steps=3", "run.device=cpu"]
    trainer = Trainer(load_config(TINY_ENS, ens_overrides(photo_folders, tmp_path / "wide", *extra)), quiet=True)
    dataset = trainer._dataset()
    lr = dataset.lr_image(0)
    with torch.no_grad():
        expected = SelfEnsemble(wide, 8)(to_tensor(lr))[0].permute(1, 2, 0).numpy()
    assert np.abs(dataset.targets[0].astype(np.float32) - expected).max() <= 2.5e-4  # fp16 storage
    summary = trainer.run()
    assert all(np.isfinite(v) for v in summary["last_losses"].values())
    merged = load(summary["final_model"]).module
    assert merged.config.channels == 26 and sum(p.numel() for p in merged.parameters()) == 130_828


def test_several_teachers_are_averaged_in_their_cached_targets(tmp_path: Path, photo_folders) -> None:
    wide = SPAN(SpanConfig(channels=10, blocks=1), deploy=True).eval()
    with torch.no_grad():
        for p in wide.parameters():
            p.mul_(0.5)
    save(wide, tmp_path / "wide.safetensors")
    teachers = f"model.teacher=[default, {tmp_path / 'wide.safetensors'}]"
    extra = [teachers, "loss.teacher_ensemble=1", "run.steps=2"]
    trainer = Trainer(load_config(TINY_ENS, ens_overrides(photo_folders, tmp_path / "two", *extra)), quiet=True)
    dataset = trainer._dataset()
    x = to_tensor(dataset.lr_image(1))
    with torch.no_grad():
        expected = ((load(None).module(x) + wide(x)) / 2)[0].permute(1, 2, 0).numpy()
    bound = 2 * 2.0**-11 * max(1.0, np.abs(expected).max())  # two fp16 roundings (each teacher's, the mean's)
    assert np.abs(dataset.targets[1].astype(np.float32) - expected).max() <= bound
    argv = ["train", str(TINY_ENS), *ens_overrides(photo_folders, tmp_path / "bad", teachers, "loss.affinity=1")]
    assert main(argv) == 2


def test_span_recipe_trains_all_weights(tmp_path: Path, photo_folders) -> None:
    config = load_config(TINY_SPAN, overrides(photo_folders, tmp_path / "span", "run.steps=20"))
    trainer = Trainer(config, quiet=True)
    start = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.run()
    moved = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, start[k])]
    assert len(moved) == len(start)  # every tensor trains in the SPAN recipe
    state, _ = read_checkpoint(tmp_path / "span" / "final.safetensors")
    assert "conv_1.eval_conv.weight" in state and "conv_1.sk.weight" not in state  # merged to deploy form


def test_merge_cli_writes_deploy_model(tmp_path: Path, photo_folders, capsys) -> None:
    config = load_config(TINY_DSCLORA, overrides(photo_folders, tmp_path / "run", "run.steps=10"))
    Trainer(config, quiet=True).run()
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(tmp_path / "run" / "latest.pt"), str(out)]) == 0
    merged = load(str(out)).module
    final = load(str(tmp_path / "run" / "final.safetensors")).module
    for key, value in final.state_dict().items():
        assert torch.equal(merged.state_dict()[key], value)  # EMA weights, same merge
    raw = tmp_path / "raw.safetensors"
    assert main(["merge", str(tmp_path / "run" / "latest.pt"), str(raw), "--no-ema"]) == 0
    assert not torch.equal(load(str(raw)).module.conv_2.eval_conv.weight, merged.conv_2.eval_conv.weight)
    # The training checkpoint itself also loads for inference: its recorded student, EMA weights, merged.
    info = read_train_state(tmp_path / "run" / "latest.pt")["model_info"]
    assert info["adapters"]["block_1.c1_r.eval_conv"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0}
    direct = load(str(tmp_path / "run" / "latest.pt")).module
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (direct(x) - merged(x)).abs().max().item() <= 1e-5
    capsys.readouterr()
    assert main(["merge", str(out), str(tmp_path / "x.safetensors")]) == 2  # not a training checkpoint
    assert "not a dsclora training checkpoint" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "run" / "latest.pt"), str(out)]) == 2  # exists
    assert f"{out} exists; add --overwrite" in capsys.readouterr().err
    latest = str(tmp_path / "run" / "latest.pt")
    assert main(["merge", latest, latest, "--overwrite"]) == 2  # its own input, whatever the flags
    assert "would overwrite one of merge's inputs" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "run" / "latest.pt"), str(out), "--no-ema", "--overwrite"]) == 0
    assert torch.equal(load(str(out)).module.conv_2.eval_conv.weight, load(str(raw)).module.conv_2.eval_conv.weight)


def test_positions_split_evenly_across_ranks() -> None:
    single = list(PositionSampler(steps=3, global_batch=4))
    ranks = [list(PositionSampler(steps=3, global_batch=4, rank=r, world=2)) for r in range(2)]
    for step in range(3):
        union = ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]
        assert union == single[4 * step : 4 * step + 4]
    assert list(PositionSampler(steps=3, global_batch=4, start_step=2)) == single[8:]


def _train_cmd(config: Path, args: list[str], *flags: str) -> list[str]:
    return [sys.executable, "-m", "dsclora.cli", "train", str(config), *args, "--quiet", *flags]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    state = read_train_state(out / "latest.pt")
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"].items()}}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path, photo_folders) -> None:
    common = ["run.steps=60", "run.checkpoint_every=10"]
    full = ens_overrides(photo_folders, tmp_path / "full", *common)
    subprocess.run(_train_cmd(TINY_ENS, full), env=_env(), check=True, capture_output=True)

    cut = ens_overrides(photo_folders, tmp_path / "cut", *common)
    proc = subprocess.Popen(_train_cmd(TINY_ENS, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "cut" / "latest.pt"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists() and not (tmp_path / "cut" / "final.safetensors").exists(), "run was not cut mid-way"
    killed_at = read_train_state(latest)["step"]
    assert 0 < killed_at < 60
    subprocess.run(_train_cmd(TINY_ENS, cut, "--resume"), env=_env(), check=True, capture_output=True)

    resumed, reference = _final_state(tmp_path / "cut"), _final_state(tmp_path / "full")
    assert read_train_state(latest)["step"] == 60
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key
    assert _logged_losses(tmp_path / "cut") == _logged_losses(tmp_path / "full")  # one row per step, same values


def _logged_losses(out: Path) -> list[tuple[str, str]]:
    with open(out / "train.csv", newline="") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle)]


def test_a_resumed_log_drops_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    """A run killed after logging step 30 but checkpointed at 20 logs 30 again: the log keeps one row per step."""
    (tmp_path / "train.csv").write_text("step,loss\n10,0.5\n20,0.4\n30,0.3\n")
    (tmp_path / "val.csv").write_text("step,psnr_y\n20,30.0\n")
    logger = Logger(tmp_path, tensorboard=False, resume_step=20)
    logger.log("train", {"step": 30, "loss": 0.25})
    logger.close()
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,loss", "10,0.5", "20,0.4", "30,0.25"]
    assert (tmp_path / "val.csv").read_text().splitlines() == ["step,psnr_y", "20,30.0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv", "val.csv"]  # no temporary file left
    Logger(tmp_path, tensorboard=False, resume_step=None).close()  # a fresh run starts fresh logs
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path: Path, photo_folders) -> None:
    # the recommended recipe: its cached targets are built by rank 0 and read by rank 1
    common = ["run.steps=8", "run.checkpoint_every=8", "data.batch=4"]
    single = ens_overrides(photo_folders, tmp_path / "single", *common)
    subprocess.run(_train_cmd(TINY_ENS, single), env=_env(), check=True, capture_output=True)
    ddp = ens_overrides(photo_folders, tmp_path / "ddp", *common)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    launcher += ["-m", "dsclora.cli", "train", str(TINY_ENS), *ddp, "--quiet"]
    proc = subprocess.run(launcher, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _final_state(tmp_path / "single"), _final_state(tmp_path / "ddp")
    # Gradients are summed in another order across processes, and Adam's normalisation turns that rounding
    # into ~1e-6 weight differences (largest where a gradient is near zero). So compare what matters: each
    # trained factor within 1 % (relative Frobenius), and the merged networks' outputs on a real image.
    for key, value in a.items():
        if key.endswith("lora_B"):
            assert ((b[key] - value).norm() / value.norm()).item() < 1e-2, key
    single_model = load(str(tmp_path / "single" / "final.safetensors")).module
    parallel = load(str(tmp_path / "ddp" / "final.safetensors")).module
    teacher = load(None).module
    lr = fixed_batch(load_config(TINY_ENS, ddp), n=1)["lr"]
    with torch.no_grad():
        out_single, out_ddp, out_teacher = single_model(lr), parallel(lr), teacher(lr)
    ddp_gap = (out_single - out_ddp).abs().max().item()
    trained = (out_single - out_teacher).abs().max().item()
    assert ddp_gap <= 1e-4 and ddp_gap <= 0.01 * trained


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown config key optim.lrr"),
        ("optim.lr=fast", "config key optim.lr: expected float"),
        ("data.batch=2.5", "config key data.batch: expected int"),
        ("model.train=gan", "config key model.train"),
        ("data.train=[/no/such/folder]", "config key data.train: folder not found"),
        ("loss.affinity_layers=[block_9]", "config key loss.affinity_layers: the student has no module 'block_9'"),
        ("loss.affinity_layers=[block_1:nope]", "the teacher has no module 'nope'"),
        ("model.base=/no/such/weights.pth", "weights not found"),
        ("model.lora.targets=[{pattern: block_9.*, rank: 2}]", "matched no Conv2d / Linear layer: block_9.*"),
        ("model.lora.targets=[{pattern: '*', rank: -1}]", "config key model.lora.targets[0].rank"),
        ("model.train_form=true", "the base's training form and low-rank updates"),
        ("loss.teacher_ensemble=4", "config key loss.teacher_ensemble"),
        ("data.train_lr=[/tmp]", "loss.rec must be 0"),
        ("model.teacher=span-ch29", "weights not found"),
        ("optim.lr=.nan", "config key optim.lr: must be a finite number, got nan"),
        ("optim.lr=.inf", "config key optim.lr: must be a finite number, got inf"),
        ("loss.rec=.nan", "config key loss.rec: must be a finite number"),
        ("optim.betas=[0.9,.inf]", "config key optim.betas[1]: must be a finite number"),
        ("optim.grad_clip=-.inf", "config key optim.grad_clip: must be a finite number"),
        ("run.threads=-1", "config key run.threads: must be >= 0, got -1"),
        ("run.seed=-3", "config key run.seed: must be >= 0"),
        ("model.lora.dropout=1.5", "config key model.lora.dropout: must be in [0, 1)"),
        ("run.output=/proc/dsclora-test", "run.output /proc/dsclora-test: cannot write there"),
    ],
)
def test_bad_configs_give_one_line_error(tmp_path: Path, photo_folders, capsys, override: str, message: str) -> None:
    argv = ["train", str(TINY_DSCLORA), *overrides(photo_folders, tmp_path / "bad", "run.steps=1"), override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_what_is_not_a_recipe_or_a_run_folder_is_named(tmp_path: Path, photo_folders, capsys) -> None:
    image = photo_folders[0] / "p00.png"
    assert main(["train", str(image)]) == 2
    assert f"{image}: not a YAML recipe (not UTF-8 text)" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["train", str(tmp_path / "list.yaml")]) == 2
    assert "not a recipe (a YAML mapping of sections), but a list" in capsys.readouterr().err
    argv = ["train", str(TINY_DSCLORA), *overrides(photo_folders, image, "run.steps=1")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run.output {image} is a file, not a folder" in err


def test_fp16_on_cpu_is_refused_before_any_work(tmp_path: Path, photo_folders, capsys) -> None:
    argv = ["train", str(TINY_DSCLORA), *overrides(photo_folders, tmp_path / "fp16", "run.steps=1")]
    assert main([*argv, "optim.amp=fp16", "run.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "fp16 needs a CUDA GPU" in err
    assert not (tmp_path / "fp16").exists()


def test_missing_config_file_and_print_config(capsys) -> None:
    assert main(["train", "/no/such.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", str(TINY_ENS), "loss.teacher=2", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "  teacher: 2.0  # λ2:" in printed and "  teacher_ensemble: 8  # 1: the teacher's own output" in printed
    assert all(" # " in line for line in printed.splitlines())  # every key comes with its meaning
    assert main(["train", str(TINY_ENS), "--print-config", "loss.teacher=3", "data.batch=5"]) == 0  # after a flag
    printed = capsys.readouterr().out
    assert "  teacher: 3.0  # λ2:" in printed and "  batch: 5  #" in printed
    assert main(["train", str(TINY_ENS), "--print-config", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_existing_run_needs_resume(tmp_path: Path, photo_folders) -> None:
    config = load_config(TINY_DSCLORA, overrides(photo_folders, tmp_path / "run", "run.steps=2"))
    Trainer(config, quiet=True).run()
    with pytest.raises(DscloraError, match="--resume"):
        Trainer(config, quiet=True)


@pytest.mark.parametrize(
    "damage", ["no config", "model of another network", "step not a number", "step negative", "step beyond the run"]
)
def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path: Path, photo_folders, damage: str) -> None:
    config = load_config(TINY_DSCLORA, overrides(photo_folders, tmp_path / "run", "run.steps=2"))
    Trainer(config, quiet=True).run()
    latest = tmp_path / "run" / "latest.pt"
    state = read_train_state(latest)
    if damage == "no config":
        del state["config"]
    elif damage == "model of another network":
        state["model"] = {"conv.weight": torch.zeros(1)}
    else:
        state["step"] = {"step not a number": "ten", "step negative": -5, "step beyond the run": 10**18}[damage]
    torch.save(state, latest)
    with pytest.raises(DscloraError, match="is damaged or not this recipe's checkpoint") as error:
        Trainer(config, resume=True, quiet=True)
    assert "\n" not in str(error.value)


def test_nan_guard_skips_then_stops(tmp_path: Path, photo_folders) -> None:
    config = load_config(TINY_DSCLORA, overrides(photo_folders, tmp_path / "nan", "run.max_bad_steps=3"))
    trainer = Trainer(config, quiet=True)
    batch = fixed_batch(config, n=2)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    poisoned = {**batch, "lr": batch["lr"].clone()}
    poisoned["lr"][0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite loss"):
        assert trainer.train_step(poisoned) is None
        assert trainer.train_step(poisoned) is None
    for key, value in trainer.student.state_dict().items():
        assert torch.equal(value, before[key])  # skipped steps change nothing
    assert trainer.train_step(batch) is not None and trainer.bad_steps == 0  # a good step resets the count
    with pytest.warns(UserWarning), pytest.raises(DscloraError, match="NaN/inf for 3 steps"):
        for _ in range(3):
            trainer.train_step(poisoned)


def test_lr_only_images_are_used_as_they_are(photo_folders) -> None:
    hr, lr = photo_folders
    images, skipped = training_images([str(hr)], [str(lr)], patch=30, scale=4)
    assert [i.has_hr for i in images] == [True] * 6 + [False] * 4 and not skipped
    dataset = PatchDataset(images, 4, 30, seed=0, augment=False, with_hr=False)
    index = next(i for i in range(len(images)) if not images[i].has_hr)
    expected = np.asarray(Image.open(images[index].path).convert("RGB"))
    assert np.array_equal(dataset.lr_image(index), expected)  # no resizing of LR-only images
    with pytest.raises(DscloraError, match="no HR"):
        PatchDataset(images, 4, 30, seed=0, with_hr=True)
    # 128-pixel HR images give 32-pixel LR: a 33-pixel patch does not fit them, the 40x36 LR images still hold it
    images, skipped = training_images([str(hr)], [str(lr)], patch=33, scale=4)
    assert len(skipped) == 6 and all(not i.has_hr for i in images)
    with pytest.raises(DscloraError, match=r"too small for data\.patch 37"):
        training_images([str(hr)], [str(lr)], patch=37, scale=4)


# ---------------------------------------------------------------------------------------- schedule and EMA by hand


def test_lr_schedule_by_hand(tmp_path: Path, photo_folders) -> None:
    from dsclora.train.config import OptimConfig
    from dsclora.train.schedule import lr_factor

    cosine = OptimConfig(lr=1e-3, warmup_steps=2, scheduler="cosine", min_lr=1e-5)  # floor 1e-5 / 1e-3 = 0.01
    # warm-up (k + 1) / 2, then 0.01 + 0.99 · (1 + cos(π · (k - 2) / 8)) / 2 over the 8 remaining steps
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.01 + 0.99 * (1 + 2**-0.5) / 2, 6: 0.505, 10: 0.01, 12: 0.01}
    for step, factor in expected.items():
        assert lr_factor(cosine, 10, step) == pytest.approx(factor, abs=1e-12), step
    multistep = OptimConfig(scheduler="multistep", milestones=[3, 5], gamma=0.5)
    assert [lr_factor(multistep, 10, k) for k in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]
    constant = OptimConfig(scheduler="constant", warmup_steps=4)
    assert [lr_factor(constant, 10, k) for k in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    # the trainer's optimiser really steps with these rates: step k uses lr · factor(k)
    extra = ["run.steps=10", "optim.warmup_steps=2", "optim.min_lr=1e-5", "optim.lr=1e-3", "optim.ema_decay=0"]
    trainer = Trainer(load_config(TINY_SPAN, overrides(photo_folders, tmp_path / "s", *extra)), quiet=True)
    batch = fixed_batch(trainer.config, n=2)
    used = []
    for _ in range(5):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(batch)
    assert used == pytest.approx([1e-3 * lr_factor(cosine, 10, k) for k in range(5)], abs=1e-15)


def test_ema_arithmetic_by_hand() -> None:
    from dsclora.train.ema import EMA

    model = torch.nn.Linear(1, 1)
    model.register_buffer("count", torch.tensor(7))
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    model.bias.requires_grad_(False)  # a frozen tensor: its average stays itself
    ema = EMA(model, decay=0.9)
    for value, count in ((2.0, 8), (3.0, 9)):
        with torch.no_grad():
            model.weight.fill_(value)
        model.count.fill_(count)
        ema.update(model)
    # 0.9 · 1 + 0.1 · 2 = 1.1, then 0.9 · 1.1 + 0.1 · 3 = 1.29
    assert ema.state_dict()["weight"].item() == pytest.approx(1.29, abs=1e-6)
    assert ema.state_dict()["bias"].item() == -2.0 and ema.state_dict()["count"].item() == 9  # ints are copied
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.state_dict()["weight"].item() == pytest.approx(1.29, abs=1e-6)


# ---------------------------------------------------------------------------------------- validation, resume


def test_validation_keeps_the_best_checkpoint(tmp_path: Path, photo_folders) -> None:
    from dsclora.measure.evaluate import evaluate_dataset

    bench = make_benchmark(tmp_path / "val", count=2, height=64, width=64)
    extra = [f"data.val=[{bench}]", "run.steps=6", "run.val_every=2", "run.checkpoint_every=6", "optim.lr=5e-3"]
    config = load_config(TINY_SPAN, [*overrides(photo_folders, tmp_path / "run"), *extra])
    summary = Trainer(config, quiet=True).run()
    with open(tmp_path / "run" / "val.csv", newline="") as handle:
        rows = [(int(r["step"]), float(r["psnr_y"])) for r in csv.DictReader(handle)]
    assert [step for step, _ in rows] == [2, 4, 6]
    best_step, best_psnr = max(rows, key=lambda row: row[1])
    assert summary["best"]["step"] == best_step and summary["best"]["psnr_y"] == pytest.approx(best_psnr, abs=1e-9)
    state = read_train_state(tmp_path / "run" / "best.pt")
    assert state["step"] == best_step and state["best"]["step"] == best_step
    model = load(str(tmp_path / "run" / "best.pt")).module  # its EMA weights, as validation ran them
    again = evaluate_dataset(model.eval(), bench, 4, progress=False)
    assert again["psnr_y"] == pytest.approx(best_psnr, abs=1e-6)
    assert summary["final_val"]["psnr_y"] == pytest.approx(rows[-1][1], abs=1e-9)


def test_resume_refuses_a_changed_recipe(tmp_path: Path, photo_folders) -> None:
    base = overrides(photo_folders, tmp_path / "run", "run.steps=2", "run.checkpoint_every=2")
    Trainer(load_config(TINY_SPAN, base), quiet=True).run()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    for change, key in (("optim.lr=2e-3", "optim.lr"), ("data.patch=20", "data.patch"), ("loss.rec=0.5", "loss.rec")):
        with pytest.raises(DscloraError, match=f"--resume: config key {key} differs"):
            Trainer(load_config(TINY_SPAN, [*base, change]), resume=True, quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing touched
    resumed = Trainer(load_config(TINY_SPAN, [*base, "run.steps=3"]), resume=True, quiet=True)  # longer: allowed
    assert resumed.step == 2 and resumed.run()["steps"] == 3


# ---------------------------------------------------------------------------------------- outputs and failures


def test_run_output_never_replaces_the_recipes_inputs(tmp_path: Path, photo_folders, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    base = run / "final.safetensors"  # the base is kept where the run would write its merged model
    base.write_bytes(embedded_weights().read_bytes())
    original = base.read_bytes()
    argv = ["train", str(TINY_DSCLORA), *overrides(photo_folders, run, "run.steps=1"), f"model.base={base}"]
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err
        assert "would overwrite one of train's inputs" in err or "no checkpoint" in err, err
    teacher = ["train", str(TINY_DSCLORA), *overrides(photo_folders, run, "run.steps=1"), f"model.teacher={base}"]
    assert main([*teacher, "--overwrite"]) == 2 and "train's inputs" in capsys.readouterr().err
    assert base.read_bytes() == original and sorted(p.name for p in run.iterdir()) == ["final.safetensors"]


def test_an_earlier_runs_files_need_overwrite(tmp_path: Path, photo_folders, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_text("an earlier run's")
    (run / "notes.txt").write_text("mine")
    argv = ["train", str(TINY_SPAN), *overrides(photo_folders, run, "run.steps=2", "run.checkpoint_every=2")]
    assert main(argv) == 2
    assert "best.pt exists; add --overwrite" in capsys.readouterr().err
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert not (run / "best.pt").exists()  # no file of the earlier run is mixed into the new one
    assert (run / "notes.txt").read_text() == "mine" and (run / "final.safetensors").is_file()
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err


def test_a_failed_run_leaves_nothing_and_writes_strict_json(tmp_path: Path, photo_folders, capsys) -> None:
    argv = ["train", str(TINY_SPAN), *overrides(photo_folders, tmp_path / "new", "run.steps=1"), "data.patch=40"]
    assert main(argv) == 2  # 128-pixel images hold no 40-pixel LR patch at x4: found once the run starts
    assert "patch x scale = 160 pixels" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    argv = ["train", str(TINY_SPAN), *overrides(photo_folders, kept, "run.steps=1"), "data.patch=40"]
    assert main(argv) == 2
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]  # no config.json, no log
    assert main([*argv[:-1], "--quiet"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((kept / "summary.json").read_text(), parse_constant=refuse)
    assert summary["best"] is None and summary["final_val"] is None  # never validated: no -Infinity
    json.loads((kept / "config.json").read_text(), parse_constant=refuse)


@pytest.mark.parametrize(("side", "taken"), [(64, True), (63, False)])
def test_an_hr_image_needs_patch_times_scale_pixels(tmp_path: Path, side: int, taken: bool) -> None:
    """LR = floor(side / 4) pixels: a 16-pixel patch at x4 fits a 64-pixel HR image, not a 63-pixel one."""
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(photo_crops(1, side, side)[0]).save(folder / "a.png")
    if taken:
        images, skipped = training_images([str(folder)], [], patch=16, scale=4)
        dataset = PatchDataset(images, 4, 16, seed=0)
        assert dataset[0]["lr"].shape == (3, 16, 16) and dataset[0]["hr"].shape == (3, 64, 64) and not skipped
    else:
        with pytest.raises(DscloraError, match=r"patch x scale = 64 pixels a side"):
            training_images([str(folder)], [], patch=16, scale=4)


def test_no_progress_bar_is_drawn_into_a_log(tmp_path: Path, photo_folders, capsys) -> None:
    """stderr is not a terminal here (as when it goes to a log): messages yes, bars (\\r, rates) no."""
    config = load_config(TINY_ENS, ens_overrides(photo_folders, tmp_path / "ens", "run.steps=2"))
    Trainer(config, quiet=False).run()
    written = "".join(capsys.readouterr())
    assert "dsclora_x4_ens_tiny: span x4, " in written  # the start message is written
    assert "\r" not in written and "teacher targets" not in written
    assert not any(rate in written for rate in ("step/s", "s/step", "img/s", "s/img", "it/s", "s/it"))


def test_a_full_disk_stops_training_in_one_line(tmp_path: Path, photo_folders, capsys, monkeypatch) -> None:
    """torch.save reports a full disk as a RuntimeError ("unexpected pos ..."): the free space tells."""
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        real_save({"part": torch.zeros(10)}, f)  # some bytes reach the temporary file, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    statvfs = os.statvfs

    def full_disk(path):
        real = statvfs(path)
        return os.statvfs_result((*real[:4], 0, *real[5:]))  # f_bavail = 0

    monkeypatch.setattr(torch, "save", save_until_full)
    monkeypatch.setattr(os, "statvfs", full_disk)
    out = tmp_path / "run"
    argv = ["train", str(TINY_SPAN), *overrides(photo_folders, out, "run.steps=2", "run.checkpoint_every=1")]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"dsclora: error: no space left on device for {out}: latest.pt was not written (free some space and run again)\n"
    )
    assert not out.exists()  # failed before its first checkpoint: nothing left, no half-written latest.pt


def test_a_log_row_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    from dsclora.fs import NoSpaceError

    logger = Logger(tmp_path, tensorboard=False, resume_step=None)
    logger.log("train", {"step": 1, "loss": 0.5})
    handle = logger.files["train"][0]

    class FillsUp:  # writes 3 bytes of the row, then the disk is full
        name = handle.name

        def __init__(self) -> None:
            self.calls = 0

        def fileno(self) -> int:
            return handle.fileno()

        def write(self, data) -> int:
            self.calls += 1
            if self.calls == 1:
                return os.write(handle.fileno(), bytes(data[:3]))
            raise OSError(errno.ENOSPC, "No space left on device")

    logger.files["train"] = (FillsUp(), *logger.files["train"][1:])
    with pytest.raises(NoSpaceError, match=f"no space left on device for {tmp_path}"):
        logger.log("train", {"step": 2, "loss": 0.25})
    assert (tmp_path / "train.csv").read_bytes() == b"step,loss\r\n1,0.5\r\n"
    handle.close()


def test_a_recipe_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DscloraError, match="nested too deeply"):
        load_config(deep)


def test_a_spec_file_base_trains_and_its_final_model_is_the_loadable_spec(tmp_path: Path, photo_folders) -> None:
    """A student that is any network (here SPANV2 from its NTIRE file): trained, merged, written in its own
    format, and the run's final_model is the file --weights loads, computing the merged student."""
    spec = REPO / "configs" / "models" / "spanv2.yaml"
    weights = (spec.parent / yaml.safe_load(spec.read_text())["weights"]).resolve()
    if not weights.is_file():
        pytest.skip(f"SPANV2 weights not found at {weights} (the workspace's ../shared)")
    extra = [
        f"model.base={spec}",
        "model.lora.targets=[{pattern: '*', rank: 2, alpha: 4}]",
        "run.steps=2",
        "data.patch=16",
        "data.batch=2",
    ]
    config = load_config(TINY_ENS, ens_overrides(photo_folders, tmp_path / "run", *extra))
    trainer = Trainer(config, quiet=True)
    summary = trainer.run()
    final = Path(summary["final_model"])
    assert final.name == "final.yaml" and (tmp_path / "run" / "final.pth").is_file()
    merged, _ = trainer.merged_model()
    x = lr_photos()[0][:, :, :24, :20]
    with torch.no_grad():
        assert (load(str(final)).runnable()(x) - trainer.described.runnable(merged.eval())(x)).abs().max() <= 1e-5


def test_a_resumed_run_counts_the_training_time_of_its_earlier_sessions(tmp_path: Path, photo_folders) -> None:
    """Studies read a run's seconds for its step time: a run resumed after an interruption must report all of it."""
    base = overrides(photo_folders, tmp_path / "run", "run.steps=2", "run.checkpoint_every=2")
    first = Trainer(load_config(TINY_SPAN, base), quiet=True).run()
    latest = tmp_path / "run" / "latest.pt"
    state = read_train_state(latest)
    assert 0 < state["seconds"] == pytest.approx(first["seconds"], abs=0.5)
    torch.save({**state, "seconds": 1000.0}, latest)  # as if the first session had trained for 1000 s
    resumed = Trainer(load_config(TINY_SPAN, [*base, "run.steps=3"]), resume=True, quiet=True).run()
    assert resumed["seconds"] > 1000.0  # the earlier session plus this one
