"""Output a tool prints from C++ straight to the process's file descriptors (pnnx's passes, the ONNX exporter's
graph dump on a failed export) kept out of the user's terminal: dsclora says what failed in one line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def captured_output(log: Path) -> Iterator[None]:
    """Send this process's stdout / stderr file descriptors (and Python's stdout) to ``log`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
