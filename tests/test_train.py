"""Training: the recipes end to end, what learns, resume after SIGKILL, DDP equivalence, bad configs.

Runs on photos generated from scikit-image's wheel and on the embedded model as base, so it needs no
workspace data: these tests run in any clone.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
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
from dsclora.weights.sources.span import save
from support import REPO

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
    ],
)
def test_bad_configs_give_one_line_error(tmp_path: Path, photo_folders, capsys, override: str, message: str) -> None:
    argv = ["train", str(TINY_DSCLORA), *overrides(photo_folders, tmp_path / "bad", "run.steps=1"), override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


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
    with pytest.raises(DscloraError, match="smaller than"):
        training_images([str(hr)], [str(lr)], patch=37, scale=4)
