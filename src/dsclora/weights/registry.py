"""Named weights: the embedded default, the official checkpoints (file name, sha256, source URL), and where
each is found.

``default`` is the project's own trained model shipped inside the package (``assets/``). Other names resolve
through a search path: every folder in ``$DSCLORA_WEIGHTS_DIR`` (``os.pathsep``-separated),
then the user cache (``$XDG_CACHE_HOME/dsclora/weights``, default ``~/.cache/dsclora/weights``). ``download``
fetches a registry entry by URL into the cache, verifying its sha256 before it is renamed into place.
Sources and hashes: ``docs/weights.md`` and the repositories named in each entry.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write, sha256_file, unreadable, user_cache_dir

ENV_VAR = "DSCLORA_WEIGHTS_DIR"
DEFAULT = "default"
EMBEDDED_FILE = "dsclora_x4.safetensors"


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    filename: str
    sha256: str
    url: str
    description: str
    license: str


_DSCF = "https://github.com/Yaozzz666/DSCF-SR/raw/0532888c0ece73204532dcfa943fec8d0a82966b/model_zoo/"
_NTIRE24 = "https://github.com/Amazingren/NTIRE2024_ESR/raw/6404fa48dde4a4adbf241a51debdc661aef20449/model_zoo/"

REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "dscf",
            "dscf_team23_DSCF.pth",
            "239e76bc4e4e738491c3963805c0a79f524400acf5fbde34b2cb1a855dd62cb1",
            _DSCF + "team23_DSCF.pth",
            "official DSCLoRA release (merged), SPAN C=26 x4, NTIRE 2025 ESR winner",
            "MIT (DSCF-SR repository)",
        ),
        WeightsEntry(
            "span-tiny",
            "ntire2024_team39_spantiny_ch26_slim.pth",
            "30bf224aee5d3fb9cbc7a3bf164a294f957f65c45f5b271052947097922040a5",
            _NTIRE24 + "team39_spantiny_ch26_slim.pth",
            "SPAN-tiny C=26 x4 (NTIRE 2024 team 39): DSCLoRA's base and teacher",
            "MIT (NTIRE 2024 ESR kit); weights by team 39",
        ),
        WeightsEntry(
            "span-ch28",
            "ntire2024_team38_span_ch28_slim.pth",
            "6c80f05048313289c6526e5fc9726688d7bb3dfdd6ae3c8b1e7dd09f601e5971",
            _NTIRE24 + "team38_span_ch28_slim.pth",
            "SPAN C=28 x4 (NTIRE 2024 team 38)",
            "MIT (NTIRE 2024 ESR kit); weights by team 38",
        ),
    )
}


def embedded_weights() -> Path:
    """The project's own trained x4 model inside the installed package (``--weights default``)."""
    path = Path(str(resources.files("dsclora") / "assets" / EMBEDDED_FILE))
    if not path.is_file():
        raise DscloraError(f"this installation lacks the embedded model {EMBEDDED_FILE}; reinstall dsclora")
    return path


def cache_dir() -> Path:
    return user_cache_dir("weights")


def search_path() -> list[Path]:
    folders = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*folders, cache_dir()]


def resolve(name_or_path: str) -> Path:
    """A file path as is, ``default`` as the embedded model, or a registry name looked up (and sha256-checked)
    along the search path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        if candidate.is_dir():
            raise DscloraError(f"weights {name_or_path!r} is a folder; give a checkpoint file or a name")
        return candidate
    if candidate.is_symlink():  # there but unusable: a loop or a link to nothing
        raise DscloraError(f"weights {unreadable(candidate)}")
    if name_or_path == DEFAULT:
        return embedded_weights()
    if name_or_path not in REGISTRY:
        known = ", ".join([DEFAULT, *REGISTRY])
        raise DscloraError(f"weights not found: {name_or_path!r} is neither a file nor a known name ({known})")
    entry = REGISTRY[name_or_path]
    for folder in search_path():
        path = folder / entry.filename
        if path.is_file():
            if sha256_file(path) != entry.sha256:
                raise DscloraError(f"{path}: sha256 does not match the registry entry for {entry.name!r}")
            return path
    where = ", ".join(str(p) for p in search_path())
    raise DscloraError(
        f"weights {entry.name!r} ({entry.filename}) not found in {where}; "
        f"set {ENV_VAR} or run `dsclora weights download {entry.name}`"
    )


def download(name: str, timeout: float = 60.0) -> Path:
    """Fetch a registry entry into the cache; the file appears only once its sha256 has been verified."""
    if name not in REGISTRY:
        raise DscloraError(f"unknown weights name {name!r} (known: {', '.join(REGISTRY)})")
    entry = REGISTRY[name]
    target = cache_dir() / entry.filename
    if target.is_file() and sha256_file(target) == entry.sha256:
        return target
    try:
        with atomic_write(target) as tmp:
            with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 16):
                    out.write(block)
            digest = sha256_file(tmp)
            if digest != entry.sha256:
                raise DscloraError(f"download of {name!r} has sha256 {digest}, expected {entry.sha256}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DscloraError(f"could not download {name!r} from {entry.url}: {exc}") from None
    return target
