"""Training logs: one CSV file per stream (train.csv, val.csv), and TensorBoard scalars where installed."""

from __future__ import annotations

import csv
from pathlib import Path


class Logger:
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
