"""Training logs: one CSV file per stream (train.csv, val.csv), and TensorBoard scalars where installed."""

from __future__ import annotations

import csv
from pathlib import Path

from dsclora.fs import atomic_write


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows up to ``step``: those a killed run logged after its last checkpoint are logged again."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    column = header.index("step")
    kept = [row for row in body if row and int(float(row[column])) <= step]
    if len(kept) == len(body):
        return
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *kept])


class Logger:
    def __init__(self, out: Path, tensorboard: bool, resume_step: int | None) -> None:
        """``resume_step``: the checkpoint's step when a run resumes (its logs continue from there), else None."""
        self.out = out
        for existing in sorted(out.glob("*.csv")):  # listed before any rewrite makes a temporary file
            if resume_step is None:  # a fresh run starts fresh logs
                existing.unlink()
            else:
                _drop_rows_after(existing, resume_step)
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
