"""The training loop: a student learns from HR patches and/or a frozen teacher; EMA, AMP, resume, DDP.

One ``Trainer`` runs every recipe; the config decides what trains (``networks``), where the teacher's targets
come from (online, or ``teacher.TeacherTargets``), and which loss terms are on (``losses.Objective``).
Everything a resumed run needs lives in ``latest.pt`` (model, optimiser, scheduler, EMA, RNG, step, best
score), written atomically every ``run.checkpoint_every`` steps; data order is a function of the step
(``data.patches``), so a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsclora.data.patches import PatchDataset, PositionSampler, default_workers, training_images
from dsclora.devices import native_bf16, resolve_device
from dsclora.errors import DscloraError
from dsclora.fs import check_output_folder, check_outputs, write_json
from dsclora.measure.evaluate import check_dataset, evaluate_dataset
from dsclora.measure.profiling import peak_memory
from dsclora.models.checks import checked_merge
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.ensemble import SelfEnsemble
from dsclora.train.config import TrainConfig
from dsclora.train.distributed import DistInfo, all_finite, barrier, init_distributed, shutdown
from dsclora.train.ema import EMA
from dsclora.train.logger import Logger
from dsclora.train.losses import FeatureTap, Objective, layer_pairs
from dsclora.train.networks import build_student, build_teachers
from dsclora.train.schedule import lr_factor, make_optimizer
from dsclora.train.teacher import TeacherTargets
from dsclora.weights.checkpoints import read_train_state, write_train_state
from dsclora.weights.load import input_files

Batch = dict[str, torch.Tensor]
# Every file a run writes in run.output (plus tensorboard/): the outputs of the one output policy. The merged
# network is final.safetensors for SPAN, final.pth + final.yaml (a spec file) for networks given as code.
RUN_FILES = ("config.json", "latest.pt", "best.pt", "final.safetensors", "final.pth", "final.yaml", "summary.json")
RUN_FILES += ("train.csv", "val.csv")


def check_run_output(config: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """run.output checked before any work (``fs.check_outputs``): a writable folder; none of the run's files is
    one of its inputs (model.base / teacher with what they read, the data folders' files), whatever the flags;
    files of an earlier run there only with ``--resume`` (continue it) or ``--overwrite`` (start afresh)."""
    out = check_output_folder(config.run.output, "run.output")
    m, d = config.model, config.data
    inputs: list[Path | str] = [*d.train, *d.train_lr, *d.val]
    teachers = m.teacher if isinstance(m.teacher, list) else [m.teacher]
    for name in dict.fromkeys(n for n in [m.base, *teachers] if n):
        inputs += input_files(name)
    if not resume and not overwrite and (out / "latest.pt").exists():
        raise DscloraError(
            f"run.output {out} already holds a run: add --resume to continue it or --overwrite to start afresh, "
            "or choose another run.output"
        )
    check_outputs(
        "train",
        [out / name for name in RUN_FILES],
        inputs,
        overwrite=resume or overwrite,
        what="run.output",
        input_hint="choose another run.output",
        exists_hint="add --overwrite to start afresh there (replacing it), or choose another run.output",
    )
    return out


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False, overwrite: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.quiet = quiet
        self.progress = not quiet and sys.stderr.isatty()  # bars only on a terminal, never drawn into logs
        self.out = check_run_output(config, resume, overwrite)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = resolve_device(config.run.device)
        if self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(self.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        self._check_precision()
        torch.manual_seed(config.run.seed)
        built = build_student(config.model, self.device, config.run.seed)
        self.described: ModelDescriptor = built.descriptor  # the student with its architecture's facts
        self.student = built.descriptor.module
        self.model_info = built.info  # what rebuilds the student from a training state
        self.scale = built.descriptor.scale
        for root in config.data.val:  # every validation pair decoded and sized before the first step
            check_dataset(root, self.scale, limit=config.data.val_max_images or None)
        loss = config.loss
        self.teachers: list[ModelDescriptor] = []
        if loss.teacher > 0 or loss.affinity > 0:
            self.teachers = build_teachers(config.model, self.scale, self.device)
        self.teacher = self.teachers[0] if self.teachers else None  # the one whose features the affinity term reads
        self.cached_targets = loss.teacher > 0 and loss.teacher_targets == "cached"
        pairs = layer_pairs(loss.affinity_layers, self.described.hooks.feature_layers) if loss.affinity > 0 else []
        self.objective = Objective(loss, pairs)
        self.student_tap = FeatureTap(self.student, [s for s, _ in pairs], "student") if pairs else None
        self.teacher_tap = FeatureTap(self.teacher.module, [t for _, t in pairs], "teacher") if pairs else None
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config.optim, self.trainable)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(config.optim, config.run.steps, s)
        )
        self.ema = EMA(self.student, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
        self.scaler = (
            torch.amp.GradScaler("cuda") if config.optim.amp == "fp16" and self.device.type == "cuda" else None
        )
        self.step = 0
        self.seconds = 0.0  # training time of the earlier sessions of a resumed run
        self._session_start: float | None = None
        self.best: dict = {"psnr_y": -math.inf, "step": None}
        self.bad_steps = 0
        if resume:
            self._load_state(self.out / "latest.pt")
        self.net: nn.Module = self.described.runnable(self.student)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.net, device_ids=ids)

    def _check_precision(self) -> None:
        """fp16 autocast is for GPUs; bf16 without hardware support runs, but emulated: say so before the run."""
        amp = self.config.optim.amp
        if amp == "fp16" and self.device.type != "cuda":
            raise DscloraError(
                f"config key optim.amp: fp16 needs a CUDA GPU, the run is on {self.device.type}; use bf16"
            )
        if amp == "bf16" and self.dist.is_main and not self.quiet and not native_bf16(self.device):
            tqdm.write(
                f"optim.amp bf16: {self.device.type} has no native bf16 here, so it is emulated and slower than fp32; "
                "optim.amp=none trains the same recipe in fp32"
            )

    # -------------------------------------------------------------------------------- state

    def _state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "model_info": self.model_info,
            "model": self.student.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best": {k: v for k, v in self.best.items() if v is not None and v != -math.inf},
            "bad_steps": self.bad_steps,
            "rng_torch": torch.get_rng_state(),
            "seconds": self.elapsed(),
        }

    def elapsed(self) -> float:
        """Seconds this run has trained, over every session of it (a resumed run counts its earlier ones)."""
        now = time.perf_counter()
        return self.seconds + (now - self._session_start if self._session_start is not None else 0.0)

    def save_state(self, name: str) -> Path:
        path = self.out / name
        write_train_state(path, self._state())
        return path

    def _load_state(self, path: Path) -> None:
        if not path.is_file():
            raise DscloraError(f"--resume: no checkpoint at {path}")
        state = read_train_state(path)
        try:  # every part of the file is used as it was written: a damaged or edited one fails here, in one line
            saved = state["config"]
            current = self.config.to_dict()
            for section in ("model", "data", "loss", "optim"):
                for key, value in current[section].items():
                    if saved[section].get(key) != value:
                        raise DscloraError(f"--resume: config key {section}.{key} differs from the checkpoint's")
            self.student.load_state_dict(state["model"])
            if self.ema and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            if not 0 <= self.step <= self.config.run.steps:
                raise ValueError(f"step {self.step} is outside 0..run.steps ({self.config.run.steps})")
            self.best.update(state["best"])
            self.bad_steps = int(state["bad_steps"])
            torch.set_rng_state(state["rng_torch"])
            self.seconds = float(state.get("seconds", 0.0))  # absent in checkpoints written before it was kept
            if not 0 <= self.seconds < math.inf:
                raise ValueError(f"seconds {self.seconds} is not a duration")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise DscloraError(
                f"--resume: {path} is damaged or not this recipe's checkpoint ({type(exc).__name__}: {first_line})"
            ) from None

    # -------------------------------------------------------------------------------- losses

    @torch.no_grad()
    def _teacher_outputs(self, batch: Batch) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """(teacher SR, teacher features) as far as the objective needs them."""
        c = self.config.loss
        lr = batch["lr"]
        teacher_sr = batch.get("target") if self.cached_targets else None
        features = None
        if self.teacher_tap is not None:  # features of a single pass, even under an ensemble (it has no one map)
            single_sr = self.teacher.runnable()(lr)
            features = self.teacher_tap.take()
            if c.teacher > 0 and teacher_sr is None and c.teacher_ensemble == 1:
                teacher_sr = single_sr
        if c.teacher > 0 and teacher_sr is None:
            outputs = [SelfEnsemble(t.runnable(), c.teacher_ensemble)(lr) for t in self.teachers]
            teacher_sr = sum(outputs) / len(outputs)
        return teacher_sr, features

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every loss term of one batch (``lr``, and ``hr`` / ``target`` as the recipe needs)."""
        sr = self.net(batch["lr"])
        features = self.student_tap.take() if self.student_tap is not None else None
        teacher_sr, teacher_features = self._teacher_outputs(batch) if self.teacher else (None, None)
        return self.objective(sr, features, batch.get("hr"), teacher_sr, teacher_features)

    # -------------------------------------------------------------------------------- data

    def _dataset(self) -> PatchDataset:
        c = self.config
        images, skipped = training_images(c.data.train, c.data.train_lr, c.data.patch, self.scale)
        if skipped and self.dist.is_main and not self.quiet:
            need = c.data.patch * self.scale
            tqdm.write(
                f"skipping {len(skipped)} training image(s) smaller than a patch needs (HR: patch x scale = {need} "
                f"pixels a side, LR-only: {c.data.patch}; e.g. {skipped[0].name})"
            )
        dataset = PatchDataset(
            images,
            self.scale,
            c.data.patch,
            c.run.seed,
            c.data.augment,
            c.data.cache_in_memory,
            with_hr=c.loss.rec > 0,
        )
        if self.cached_targets:
            lr_images = [dataset.lr_image(i) for i in range(len(images))]
            each = []
            for teacher in self.teachers:  # every teacher's targets cached on their own; several are averaged
                targets = TeacherTargets(teacher.runnable(), teacher.identity, c.loss.teacher_ensemble, self.scale)
                # one process computes what is missing (with a progress bar), the others then read it
                computed = targets.get_all(lr_images, progress=self.progress) if self.dist.is_main else None
                barrier(self.dist)
                each.append(computed or targets.get_all(lr_images, progress=False))
            if len(each) > 1:
                per_image = zip(*each, strict=True)
                each = [[(sum(t.astype(np.float32) for t in one) / len(one)).astype(np.float16) for one in per_image]]
            dataset.set_targets(each[0])
        return dataset

    def _loader(self) -> DataLoader:
        c = self.config
        sampler = PositionSampler(c.run.steps, c.data.batch, self.dist.rank, self.dist.world, self.step)
        workers = default_workers(c.data.workers)
        return DataLoader(
            self._dataset(),
            batch_size=sampler.per_rank,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )

    # -------------------------------------------------------------------------------- steps

    def _autocast(self):
        amp = self.config.optim.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def train_step(self, batch: Batch) -> dict[str, float] | None:
        """One optimiser step; None when the loss was not finite and the step was skipped."""
        self.student.train()
        with self._autocast():
            terms = self.losses(batch)
        loss = terms["loss"]
        if not all_finite(bool(torch.isfinite(loss)), self.dist, self.device):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            if self.bad_steps >= self.config.run.max_bad_steps:
                raise DscloraError(
                    f"loss was NaN/inf for {self.bad_steps} steps in a row (step {self.step}); "
                    "lower optim.lr, enable optim.grad_clip or check the data"
                )
            warnings.warn(f"step {self.step}: non-finite loss, step skipped", stacklevel=1)
            self.scheduler.step()
            self.step += 1
            return None
        self.bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.student)
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def averaged_model(self) -> nn.Module:
        """The training-form network validation and export use: EMA weights when EMA is on."""
        if self.ema is None:
            return self.student
        averaged = copy.deepcopy(self.student)
        averaged.load_state_dict(self.ema.state_dict())
        return averaged

    def merged_model(self) -> tuple[nn.Module, float]:
        """The averaged network merged into its base architecture, checked against its training form."""
        return checked_merge(self.averaged_model(), self.described.runnable)

    def validate(self) -> dict | None:
        c = self.config.data
        if not c.val:
            return None
        merged, _ = self.merged_model()
        model = self.described.runnable(merged.eval())
        results = [
            evaluate_dataset(model, root, self.scale, self.device, progress=False, limit=c.val_max_images or None)
            for root in c.val
        ]
        return {
            "step": self.step,
            "psnr_y": sum(r["psnr_y"] for r in results) / len(results),
            "per_set": {r["dataset"]: {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"]} for r in results},
        }

    # -------------------------------------------------------------------------------- run

    def run(self) -> dict:
        c = self.config
        main = self.dist.is_main
        created = not self.out.exists()
        logger = None
        bar = None
        try:
            if main:
                if not self.resume:  # a fresh run (with --overwrite where an earlier one was): none of its files
                    for name in RUN_FILES:
                        (self.out / name).unlink(missing_ok=True)
                self.out.mkdir(parents=True, exist_ok=True)
                write_json(self.out / "config.json", c.to_dict())
            logger = Logger(self.out, c.run.tensorboard, self.step if self.resume else None) if main else None
            loader = self._loader()
            if main and not self.quiet:
                trainable = sum(p.numel() for p in self.trainable)
                tqdm.write(
                    f"{c.name}: {self.described.arch} x{self.scale}, {trainable:,} trainable parameters, "
                    f"{c.run.steps} steps of batch {c.data.batch} on {self.device} x{self.dist.world}"
                    + (f", resuming at step {self.step}" if self.step else "")
                )
            bar = tqdm(
                total=c.run.steps,
                initial=self.step,
                disable=not main or not self.progress,
                unit="step",
                dynamic_ncols=True,
            )
            self._session_start = window = time.perf_counter()
            last: dict[str, float] = {}
            for batch in loader:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                terms = self.train_step(batch)
                last = terms or last
                if main and terms is not None and self.step % c.run.log_every == 0:
                    elapsed, window = time.perf_counter() - window, time.perf_counter()
                    row = {
                        "step": self.step,
                        "lr": self.scheduler.get_last_lr()[0],
                        **terms,
                        "sec_per_step": elapsed / c.run.log_every,
                        "peak_mem_mib": peak_memory(self.device) / 2**20,
                    }
                    logger.log("train", row)
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "rec", "ts", "ad", "lr")}
                        | {"mem": f"{row['peak_mem_mib']:.0f}M"}
                    )
                bar.update(1)
                if c.run.val_every and self.step % c.run.val_every == 0 and self.step < c.run.steps:
                    self._validate_and_keep_best(logger)
                if self.step % c.run.checkpoint_every == 0 and self.step < c.run.steps:
                    if main:
                        self.save_state("latest.pt")
                    barrier(self.dist)
            bar.close()
            result = self._validate_and_keep_best(logger)
            summary = {
                "steps": self.step,
                "seconds": self.elapsed(),  # every session of a resumed run
                "last_losses": last,
                "final_val": result,
                "best": self.best if self.best["step"] is not None else None,  # None: never validated
            }
            if main:
                self.save_state("latest.pt")
                summary.update(self._export())
                write_json(self.out / "summary.json", summary)
            barrier(self.dist)
            return summary
        except BaseException:
            if main and not (self.out / "latest.pt").exists():
                self._remove_unfinished(created)
            raise
        finally:
            if bar is not None:
                bar.close()
            if logger:
                logger.close()
            shutdown(self.dist)

    def _remove_unfinished(self, created: bool) -> None:
        """A run that failed before its first checkpoint leaves nothing: it cannot be resumed, and its
        config.json and logs would only make the next run's output look taken."""
        if created:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for name in RUN_FILES:
            (self.out / name).unlink(missing_ok=True)

    def _validate_and_keep_best(self, logger: Logger | None) -> dict | None:
        result = self.validate() if self.dist.is_main else None
        if result is not None and logger is not None:
            logger.log("val", {"step": result["step"], "psnr_y": result["psnr_y"]})
            if not self.quiet:
                tqdm.write(f"step {self.step}: validation Y-PSNR {result['psnr_y']:.3f} dB")
            if result["psnr_y"] > self.best["psnr_y"]:
                self.best = {"psnr_y": result["psnr_y"], "step": self.step}
                self.save_state("best.pt")
        barrier(self.dist)
        return result

    def _export(self) -> dict:
        """Merge into the base architecture (checked against the training form) and write ``final<suffix>`` in
        the base's own format (SPAN: our safetensors; other networks: a state dict and a spec file beside it)."""
        merged, diff = self.merged_model()
        files = self.described.saver(merged, self.out / f"final{self.described.suffix}")
        return {"final_model": str(files[0]), "files": [str(f) for f in files], "merge_max_abs_diff": diff}
