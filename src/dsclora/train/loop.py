"""The training loop: DSCLoRA (ConvLoRA student + teacher distillation) and plain SPAN recipes.

One ``Trainer`` runs both; the config decides what trains and which loss terms are on. Everything a resumed
run needs lives in ``latest.pt`` (model, optimiser, scheduler, EMA, RNG, step, best score), written
atomically every ``run.checkpoint_every`` steps; data order is a function of the step (``train/data.py``),
so a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsclora.checkpoints import TRAIN_STATE_FORMAT, ModelSpec, load_model, save_model, spec_of
from dsclora.errors import DscloraError
from dsclora.evaluate import evaluate_dataset
from dsclora.inference import resolve_device
from dsclora.lora import mark_only_lora_trainable
from dsclora.losses import reconstruction_loss, spatial_affinity_loss
from dsclora.models.dsclora import DSCLoRA, DSCLoRAConfig
from dsclora.models.span import SPAN, SpanConfig
from dsclora.profiling import rss_kib
from dsclora.reparam import max_abs_difference, to_deploy
from dsclora.train.config import TrainConfig
from dsclora.train.data import PatchDataset, PositionSampler, default_workers, training_images
from dsclora.train.distributed import DistInfo, all_finite, barrier, init_distributed, shutdown
from dsclora.train.ema import EMA
from dsclora.utils import atomic_write
from dsclora.weights import resolve

STATE_FORMAT = TRAIN_STATE_FORMAT


# ----------------------------------------------------------------------------------------------- models


def build_models(config: TrainConfig, device: torch.device) -> tuple[SPAN, SPAN | None]:
    """(student, frozen teacher or None) per ``config.model``."""
    m = config.model
    if m.arch == "dsclora":
        base, spec = load_model(resolve(m.base), device)
        if spec.span.scale != m.scale:
            raise DscloraError(f"config key model.scale: {m.scale}, but {m.base} is a x{spec.span.scale} model")
        lora = DSCLoRAConfig(m.block_rank, m.block_alpha, m.tail_rank, m.tail_alpha, m.lora_dropout)
        student = DSCLoRA.from_span(base, lora).to(device)
        mark_only_lora_trainable(student)
        teacher = to_deploy(base).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return student, teacher
    if m.init:
        model, spec = load_model(resolve(m.init), device)
        if spec.arch != "span":
            raise DscloraError(f"config key model.init: {m.init} is a {spec.arch} checkpoint, not a SPAN")
        model = to_deploy(model) if m.form == "deploy" else _as_train_form(model)
    else:
        model = SPAN(SpanConfig(channels=m.channels, blocks=m.blocks, scale=m.scale), deploy=m.form == "deploy")
    model = model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, None


def _as_train_form(model: SPAN) -> SPAN:
    from dsclora.export import deploy_to_train_form

    return model if not model.deploy else deploy_to_train_form(model)


class _WithFeatures(nn.Module):
    """Routes ``forward`` to ``forward_features`` so DDP's gradient hooks see the feature path too."""

    def __init__(self, model: SPAN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.model.forward_features(x)


def affinity_indices(layers: list[str], blocks: int) -> list[int]:
    """Positions in ``forward_features``'s list: block_i -> i - 1, conv_2 -> last."""
    index = {f"block_{i}": i - 1 for i in range(1, blocks + 1)} | {"conv_2": blocks}
    unknown = [name for name in layers if name not in index]
    if unknown:
        raise DscloraError(f"config key loss.affinity_layers: unknown layer {unknown[0]} (use {', '.join(index)})")
    return [index[name] for name in layers]


# ----------------------------------------------------------------------------------------------- schedule


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = config.optim
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine / multistep / constant."""
    o, total = config.optim, config.run.steps
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.scheduler == "multistep":
        return o.gamma ** sum(step >= m for m in o.milestones)
    if o.scheduler == "cosine":
        span = max(total - o.warmup_steps, 1)
        progress = min((step - o.warmup_steps) / span, 1.0)
        floor = o.min_lr / o.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


# ----------------------------------------------------------------------------------------------- trainer


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (rss_kib("VmHWM") or 0) / 1024


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.quiet = quiet
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = resolve_device(config.run.device)
        if self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(self.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        self.out = Path(config.run.output)
        torch.manual_seed(config.run.seed)
        self.student, self.teacher = build_models(config, self.device)
        self.spec: ModelSpec = spec_of(self.student)
        distilling = self.teacher is not None and config.loss.affinity > 0
        self.layers = affinity_indices(config.loss.affinity_layers, self.student.config.blocks) if distilling else []
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config, self.trainable)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(config, s))
        self.ema = EMA(self.student, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
        self.scaler = (
            torch.amp.GradScaler("cuda") if config.optim.amp == "fp16" and self.device.type == "cuda" else None
        )
        self.step = 0
        self.best: dict = {"psnr_y": -math.inf, "step": None}
        self.bad_steps = 0
        if resume:
            self._load_state(self.out / "latest.pt")
        elif (self.out / "latest.pt").exists():
            raise DscloraError(
                f"run.output {self.out} already holds a run: add --resume to continue it, or choose another run.output"
            )
        self.net: nn.Module = _WithFeatures(self.student)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.net, device_ids=ids)

    # -------------------------------------------------------------------------------- state

    def _state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "model_spec": self.spec.to_dict(),
            "model": self.student.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best": {k: v for k, v in self.best.items() if v is not None and v != -math.inf},
            "bad_steps": self.bad_steps,
            "rng_torch": torch.get_rng_state(),
        }

    def save_state(self, name: str) -> Path:
        path = self.out / name
        with atomic_write(path) as tmp:
            torch.save(self._state(), tmp)
        return path

    def _load_state(self, path: Path) -> None:
        if not path.is_file():
            raise DscloraError(f"--resume: no checkpoint at {path}")
        state = load_train_state(path)
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
        self.best.update(state["best"])
        self.bad_steps = int(state["bad_steps"])
        torch.set_rng_state(state["rng_torch"])

    # -------------------------------------------------------------------------------- losses

    def losses(self, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config.loss
        sr, features = self.net(lr)
        terms = {"rec": reconstruction_loss(sr, hr, c.rec_kind)}
        total = c.rec * terms["rec"]
        if self.teacher is not None and (c.teacher > 0 or c.affinity > 0):
            with torch.no_grad():
                sr_t, features_t = self.teacher.forward_features(lr)
            if c.teacher > 0:
                terms["ts"] = F.l1_loss(sr, sr_t)
                total = total + c.teacher * terms["ts"]
            if c.affinity > 0:
                terms["ad"] = sum(
                    spatial_affinity_loss(features[i], features_t[i], c.affinity_chunk) for i in self.layers
                )
                total = total + c.affinity * terms["ad"]
        terms["loss"] = total
        return terms

    # -------------------------------------------------------------------------------- loop

    def _loader(self) -> DataLoader:
        c = self.config
        # mod-crop can take up to scale - 1 pixels off a side: keep images that still hold a whole HR patch
        files, skipped = training_images(c.data.train, c.data.patch * c.model.scale + c.model.scale - 1)
        if skipped and self.dist.is_main and not self.quiet:
            tqdm.write(f"skipping {len(skipped)} training image(s) smaller than the HR patch (e.g. {skipped[0].name})")
        dataset = PatchDataset(
            files,
            c.model.scale,
            c.data.patch,
            c.run.seed,
            c.data.augment,
            c.data.cache_in_memory,
        )
        sampler = PositionSampler(c.run.steps, c.data.batch, self.dist.rank, self.dist.world, self.step)
        workers = default_workers(c.data.workers)
        return DataLoader(
            dataset,
            batch_size=sampler.per_rank,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )

    def _autocast(self):
        amp = self.config.optim.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def train_step(self, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, float] | None:
        """One optimiser step; None when the loss was not finite and the step was skipped."""
        self.student.train()
        with self._autocast():
            terms = self.losses(lr, hr)
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

    def averaged_model(self) -> SPAN:
        """The training-form network validation and export use: EMA weights when EMA is on."""
        if self.ema is None:
            return self.student
        averaged = self.spec.build().to(self.device)
        averaged.load_state_dict(self.ema.state_dict())
        return averaged

    def eval_model(self) -> SPAN:
        """``averaged_model`` merged to a plain deploy-form SPAN."""
        return to_deploy(self.averaged_model()).eval()

    def validate(self) -> dict | None:
        c = self.config.data
        if not c.val:
            return None
        model = self.eval_model()
        results = [
            evaluate_dataset(
                model, root, self.config.model.scale, self.device, progress=False, limit=c.val_max_images or None
            )
            for root in c.val
        ]
        return {
            "step": self.step,
            "psnr_y": sum(r["psnr_y"] for r in results) / len(results),
            "per_set": {r["dataset"]: {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"]} for r in results},
        }

    def run(self) -> dict:
        c = self.config
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        logger = _Logger(self.out, c.run.tensorboard, append=self.resume) if main else None
        trainable = sum(p.numel() for p in self.trainable)
        if main and not self.quiet:
            tqdm.write(
                f"{c.name}: {self.spec.arch} x{c.model.scale}, {trainable:,} trainable parameters, "
                f"{c.run.steps} steps of batch {c.data.batch} on {self.device} x{self.dist.world}"
                + (f", resuming at step {self.step}" if self.step else "")
            )
        bar = tqdm(
            total=c.run.steps, initial=self.step, disable=not main or self.quiet, unit="step", dynamic_ncols=True
        )
        start, window = time.perf_counter(), time.perf_counter()
        last: dict[str, float] = {}
        try:
            for lr, hr in self._loader():
                lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
                terms = self.train_step(lr, hr)
                last = terms or last
                if main and terms is not None and self.step % c.run.log_every == 0:
                    elapsed = time.perf_counter() - window
                    window = time.perf_counter()
                    row = {
                        "step": self.step,
                        "lr": self.scheduler.get_last_lr()[0],
                        **terms,
                        "sec_per_step": elapsed / c.run.log_every,
                        "peak_mem_mib": peak_memory_mib(self.device),
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
                "seconds": time.perf_counter() - start,
                "last_losses": last,
                "final_val": result,
                "best": self.best,
            }
            if main:
                self.save_state("latest.pt")
                summary.update(self._export())
                (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            barrier(self.dist)
            return summary
        finally:
            bar.close()
            if logger:
                logger.close()
            shutdown(self.dist)

    def _validate_and_keep_best(self, logger: _Logger | None) -> dict | None:
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
        """Merge to a plain SPAN, check it against the training form, write ``final.safetensors``."""
        reference = self.averaged_model()
        deployed = to_deploy(reference).eval()
        probe = self._probe_image()
        diff = max_abs_difference(reference, deployed, probe)
        if diff > 1e-4:
            raise DscloraError(f"merged model differs from the training form by {diff:.2e} (> 1e-4)")
        path = self.out / "final.safetensors"
        save_model(deployed, path)
        return {"final_model": str(path), "merge_max_abs_diff": diff}

    def _probe_image(self) -> torch.Tensor:
        from dsclora.data.benchmark import find_pairs, load_pair

        if self.config.data.val:
            pair = find_pairs(self.config.data.val[0], self.config.model.scale)[0]
            _, lr = load_pair(pair, self.config.model.scale)
            lr = lr[:96, :96]
            return torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().div(255)[None].to(self.device)
        return torch.rand(1, 3, 48, 48, device=self.device)


class _Logger:
    """CSV files per stream (train.csv, val.csv) and TensorBoard scalars when the package is installed."""

    def __init__(self, out: Path, tensorboard: bool, append: bool) -> None:
        self.out = out
        if not append:  # a fresh run starts fresh logs
            for stale in out.glob("*.csv"):
                stale.unlink()
        self.files: dict[str, tuple] = {}
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, stream: str, row: dict) -> None:
        if stream not in self.files:
            path = self.out / f"{stream}.csv"
            handle = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if path.stat().st_size == 0:
                writer.writeheader()
            self.files[stream] = (handle, writer)
        handle, writer = self.files[stream]
        writer.writerow(row)
        handle.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"{stream}/{key}", value, row["step"])

    def close(self) -> None:
        for handle, _ in self.files.values():
            handle.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------- merge


def load_train_state(path: str | Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's input problem here
        raise DscloraError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DscloraError(f"{path}: not a dsclora training checkpoint (latest.pt / best.pt)")
    return state


def merge_checkpoint(path: str | Path, out: str | Path, use_ema: bool = True) -> tuple[ModelSpec, float]:
    """Training checkpoint -> merged deploy safetensors; returns the spec and the merge's max abs diff."""
    state = load_train_state(path)
    spec = ModelSpec.from_dict(state["model_spec"])
    model = spec.build()
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    model.eval()
    deployed = to_deploy(model)
    diff = max_abs_difference(model, deployed, torch.rand(1, spec.span.in_channels, 40, 40))
    if diff > 1e-4:
        raise DscloraError(f"merged model differs from the training form by {diff:.2e}")
    save_model(deployed, out)
    return spec, diff
