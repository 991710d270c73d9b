"""Files: the one output policy, atomic writes, a full disk as one line, the user cache, hashing.

Every command that writes asks ``check_outputs`` before any work: an output is never one of the command's
inputs (whatever the flags), two outputs are never one file, an existing output is replaced only with
``--overwrite``, and the folder of every output can be written. Every write then goes through
``atomic_write``, so an error (a full disk included) leaves the old file or none, never half of a new one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dsclora.errors import DscloraError

NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Below this many free bytes a failed write is taken for a full disk: torch.save and safetensors report one
# with their own exception types and messages, not OSError(ENOSPC).
NEARLY_FULL_BYTES = 1 << 20


class NoSpaceError(DscloraError):
    """A write failed because its file system is full (or the user's quota is spent)."""


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write on ``folder``'s file system (None where unknown)."""
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return stat.f_bavail * stat.f_frsize


def no_space(exc: BaseException, folder: str | os.PathLike, name: str | None = None) -> NoSpaceError | None:
    """``exc`` as the one-line "no space left" error when it comes from a full disk under ``folder`` (writing the
    file ``name``, if known), else None."""
    if isinstance(exc, NoSpaceError):
        return exc
    full = getattr(exc, "errno", None) in NO_SPACE_ERRNOS or "No space left on device" in str(exc)
    if not full and not isinstance(exc, OSError | DscloraError):  # an OSError says what it is by its errno
        full = nearly_full(folder)
    return no_space_error(folder, name) if full else None


def nearly_full(folder: str | os.PathLike) -> bool:
    """Whether ``folder``'s file system has less than ``NEARLY_FULL_BYTES`` left: how a failed write whose
    writer does not say why (torch.save, a tool in another process) is recognised as a full disk."""
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL_BYTES


def no_space_error(folder: str | os.PathLike, name: str | None = None) -> NoSpaceError:
    what = f"{name} was not written" if name else "the write failed"
    return NoSpaceError(f"no space left on device for {folder}: {what} (free some space and run again)")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    A crash or an error leaves no half-written output: either the old file, or none, or the new one; folders
    it made for ``path`` are removed again while empty. A full disk is reported as ``NoSpaceError`` (one line
    naming the folder) whatever the writer raised.
    """
    path = Path(path)
    tmp_path: Path | None = None
    made = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
        os.replace(tmp_path, path)
    except Exception as exc:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()  # first: the free space the check below reads is what remains without it
        remove_empty(made)
        full = no_space(exc, existing_folder(path.parent), path.name)
        if full is not None and full is not exc:
            raise full from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN / ±inf float as None: JSON has no such numbers (``-Infinity`` is not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` atomically as strict JSON (non-finite numbers as null; other objects as strings)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False, default=str) + "\n")


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


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what a write there creates."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are still empty: what a failed write had created."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty (another output landed there), or already gone
            folder.rmdir()


def existing_folder(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def unreadable(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be opened as a file, as a message naming it ("no such file: X", "X is a symlink
    loop", "X is a broken symlink", "X is a folder, not a file"); "" when it is a file."""
    path = Path(path)
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symlink loop"
        if path.is_symlink():
            return f"{path} is a broken symlink (it points to {os.readlink(path)})"
        return f"no such file: {path}"
    return f"{path} is a folder, not a file" if path.is_dir() else ""


def resolved(path: str | os.PathLike, what: str) -> Path:
    """``path`` made absolute with every symlink followed; a symlink loop on the way is a one-line error."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError for a loop, later ones OSError(ELOOP)
        raise DscloraError(f"{what} {path}: a symlink loop") from None


def _probe_folder(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder`` (or its nearest existing ancestor): the only test a read-only
    mount, a full ACL or a root-squashed share cannot fool."""
    resolved(folder, what)
    existing = existing_folder(folder)
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
    resolved(folder, what)
    if folder.exists() and not folder.is_dir():
        raise DscloraError(f"{what} {folder} is a file, not a folder")
    _probe_folder(folder, what)
    return folder


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: hard links to one file share it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_outputs(
    command: str,
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    *,
    what: str = "output",
    input_hint: str = "write it elsewhere",
    exists_hint: str = "add --overwrite to replace it",
) -> list[Path]:
    """The one output policy (see the module docstring), applied before any work; returns ``outputs`` as paths.

    ``inputs`` are the files the command reads (weights, their JSON card, a check image) and the folders it
    reads (``--data``): an existing file inside such a folder is an input too. Symlinks and hard links are
    followed, so no other name for an input gets written. ``overwrite`` allows replacing existing outputs,
    never inputs.
    """
    paths = [Path(p) for p in outputs]
    input_files: set[Path] = set()
    input_folders: list[Path] = []
    input_ids: set[tuple[int, int]] = set()
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            input_folders.append(resolved(item, "input"))
            continue
        input_files.add(resolved(item, "input"))
        if (identity := _identity(item)) is not None:
            input_ids.add(identity)
    seen: dict[Path, Path] = {}
    for parent in dict.fromkeys(p.parent for p in paths):
        _probe_folder(parent, what)
    for path in paths:
        real = resolved(path, what)
        if path.is_dir():
            raise DscloraError(f"{what} {path} is a folder; give a file name")
        exists = os.path.lexists(path)
        if exists and not path.is_file():  # a device (/dev/null), a pipe, a broken link: never replaced by a file
            raise DscloraError(f"{what} {path} is not a regular file; give a file name")
        inside = any(real.is_relative_to(folder) for folder in input_folders)
        if real in input_files or (exists and (_identity(path) in input_ids or inside)):
            raise DscloraError(f"{path} would overwrite one of {command}'s inputs; {input_hint}")
        if real in seen:
            raise DscloraError(f"{command} would write {path} twice (also as {seen[real]}); give distinct names")
        seen[real] = path
        if exists and not overwrite:
            raise DscloraError(f"{path} exists; {exists_hint}")
    return paths
