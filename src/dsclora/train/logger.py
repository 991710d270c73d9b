"""Training logs: one CSV file per stream (train.csv, val.csv), and TensorBoard scalars where installed."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from dsclora.fs import atomic_write, no_space


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
    STREAMS = ("train", "val")

    def __init__(self, out: Path, tensorboard: bool, resume_step: int | None) -> None:
        """``resume_step``: the checkpoint's step when a run resumes (its logs continue from there), else None.

        Only the run's own logs (``train.csv``, ``val.csv``) are touched; other files in the folder are not ours.
        """
        self.out = out
        for existing in [out / f"{s}.csv" for s in self.STREAMS if (out / f"{s}.csv").is_file()]:
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
        """Append one row; a write that fails (a full disk) is cut back to the last whole row, then raised."""
        if stream not in self.STREAMS:
            raise ValueError(f"unknown log stream {stream!r}")
        if stream not in self.files:
            path = self.out / f"{stream}.csv"
            handle = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for the run
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=list(row), extrasaction="ignore")
            self.files[stream] = (handle, writer, text)
            if path.stat().st_size == 0:
                writer.writeheader()
        handle, writer, text = self.files[stream]
        writer.writerow(row)
        self._append(handle, text.getvalue().encode())
        text.seek(0)
        text.truncate()
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"{stream}/{key}", value, row["step"])

    @staticmethod
    def _append(handle, data: bytes) -> None:
        """Write ``data`` at the end of the unbuffered ``handle``, all of it or none of it."""
        start = os.fstat(handle.fileno()).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[handle.write(view) :]
        except OSError as exc:
            os.ftruncate(handle.fileno(), start)
            raise no_space(exc, Path(handle.name).parent, Path(handle.name).name) or exc from None

    def close(self) -> None:
        for handle, _writer, _text in self.files.values():
            handle.close()
        if self.tb is not None:
            self.tb.close()
