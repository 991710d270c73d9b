"""Files: atomic writes, the user cache, hashing, and checking that an output can be written before any work."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dsclora.errors import DscloraError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    A crash or an error leaves no half-written output: either the old file, or none, or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/dsclora/...`` (default ``~/.cache/dsclora/...``): where every cache of ours lives."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "dsclora", *parts)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _probe_folder(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder`` (or its nearest existing ancestor): the only test a read-only
    mount, a full ACL or a root-squashed share cannot fool."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DscloraError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dsclora-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DscloraError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None


def check_output_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, a folder that is a file or cannot be written (it need not exist yet)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DscloraError(f"{what} {folder} is a file, not a folder")
    _probe_folder(folder, what)
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse, before any work, an output path that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise DscloraError(f"{what} {path} is a folder; give a file name")
    _probe_folder(path.parent if str(path.parent) else Path("."), what)
    return path
