"""Reading and writing images, with one documented policy per kind of input.

| input | model sees | output |
|---|---|---|
| RGB 8-bit (PNG, JPEG, BMP, WebP, TIFF, ...) | RGB | RGB 8-bit |
| grayscale (L, 1-bit) | gray replicated to RGB | gray 8-bit (mean of the three output channels) |
| grayscale 16-bit (PNG/TIFF ``I;16``) | full 16-bit precision, replicated to RGB | gray 16-bit |
| RGBA / LA / palette with transparency | RGB (colour) | colour from the model; alpha upscaled with MATLAB bicubic and re-attached (formats without alpha, e.g. JPEG, drop it) |
| palette without transparency, CMYK, YCbCr, ... | converted to RGB | RGB 8-bit |
| EXIF orientation | applied before processing | upright |
| animated GIF / WebP / APNG, multi-page TIFF | the first frame only (``upscale`` says so) | one still image |

| RGB / RGBA 16-bit PNG | full 16-bit precision (with ``pypng``, the ``[png16]`` extra) | RGB / RGBA 16-bit PNG |

Pillow reads 16-bit-per-channel *colour* images at 8-bit precision; for PNG the small pure-Python ``pypng``
reads and writes them at 16 bits (without it they are processed at 8 bits, and a 16-bit PNG output can't be made).
Images larger than ``max_pixels`` are refused before they are decoded (decompression bombs); Pillow's own
bomb limit is raised to match, so ``max_pixels`` is the one limit. PGM holds gray only and PPM colour only: a
colour image is refused for ``.pgm`` and a grayscale one is written as RGB to ``.ppm``. Every write goes to a
temporary file renamed into place, so an error never leaves a half-written image.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write, unreadable

DEFAULT_MAX_PIXELS = 16384 * 16384
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".tga")
_ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff", ".tga"}


@dataclass
class LoadedImage:
    """An image as the model needs it, plus what is needed to write the output in the same kind."""

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    alpha: np.ndarray | None = None  # float32 (H, W) in [0, 1]
    grayscale: bool = False
    bits: int = 8


def _allow_pillow(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit to ``max_pixels`` (never lower it): our limit is the one
    that refuses, with a message naming it, and a larger ``--max-pixels`` must really let larger images in."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


class ImageTooLarge(DscloraError):
    """An image over ``max_pixels``; the caller adds how its command raises the limit (or that it cannot)."""


class NotAnImage(DscloraError):
    """A file Pillow cannot identify; the caller may say better what it is (e.g. audio without video)."""


def _too_large(path: Path, pixels: str, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"image too large: {path} has {pixels} pixels, over the limit of {max_pixels}")


def not_regular_file(path: str | os.PathLike) -> str:
    """Why ``path`` is no file to read ("X is not a regular file (a FIFO)"), or "": a FIFO would block the
    reader forever and a device (``/dev/zero``) never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{path} is not a regular file ({kind}); give an image file"


def _bomb_pixels(exc: Exception) -> str:
    """The pixel count in Pillow's decompression-bomb message ("Image size (N pixels) exceeds ..."), else a
    description without a number."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return found.group(1) if found else "an unknown number of"


def _open_header(path: Path, max_pixels: int) -> Image.Image:
    """The image opened lazily (header read, pixels not decoded), or a one-line error saying why not."""
    problem = unreadable(path) or not_regular_file(path)
    if problem:
        raise DscloraError(problem)
    if path.stat().st_size == 0:
        raise DscloraError(f"empty file (0 bytes): {path}")
    _allow_pillow(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise NotAnImage(f"not an image (or a format Pillow cannot read): {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # only above a limit below ours
        raise _too_large(path, _bomb_pixels(exc), max_pixels) from None
    except OSError as exc:
        raise DscloraError(f"cannot read {path}: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise _too_large(path, f"{w}x{h} = {w * h}", max_pixels)
    return img


def _open(path: Path, max_pixels: int) -> Image.Image:
    img = _open_header(path, max_pixels)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DscloraError(f"cannot decode {path} (truncated or corrupt): {exc}") from None
    return img


def _is_deep_colour_png(path: Path) -> bool:
    """A PNG whose IHDR says 16 bits per sample and colour (type 2 RGB or 6 RGBA)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _read_deep_png(path: Path) -> LoadedImage | None:
    """A 16-bit colour PNG at full precision through pypng; None where pypng is not installed."""
    try:
        import png
    except ImportError:
        return None
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info["planes"]
        data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    except (png.Error, ValueError, OSError) as exc:
        raise DscloraError(f"cannot decode {path} (truncated or corrupt): {exc}") from None
    values = data.astype(np.float32) / 65535.0
    alpha = np.ascontiguousarray(values[..., 3]) if planes == 4 else None
    return LoadedImage(np.ascontiguousarray(values[..., :3]), alpha=alpha, bits=16)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read any Pillow-readable image into RGB float32 [0, 1] per the policy in this module's docstring."""
    path = Path(path)
    img = _open(path, max_pixels)
    if img.format == "PNG" and _is_deep_colour_png(path):
        deep = _read_deep_png(path)
        if deep is not None:
            return deep
    with contextlib.suppress(OSError, ValueError, SyntaxError):  # a broken EXIF block is no reason to refuse
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(img, dtype=np.float64) / 65535.0
        return _gray(np.clip(gray, 0, 1), bits=16)
    if mode == "F":
        return _gray(np.clip(np.asarray(img, dtype=np.float64), 0, 1), bits=16)
    if mode in ("1", "L"):
        return _gray(np.asarray(img.convert("L"), dtype=np.float64) / 255.0, bits=8)
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if mode == "LA":
        arr = np.asarray(img, dtype=np.float32) / 255.0
        loaded = _gray(arr[..., 0].astype(np.float64), bits=8)
        loaded.alpha = arr[..., 1]
        return loaded
    if img.mode == "RGBA":
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return LoadedImage(np.ascontiguousarray(arr[..., :3]), alpha=np.ascontiguousarray(arr[..., 3]))
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(arr)


def _gray(gray: np.ndarray, bits: int) -> LoadedImage:
    rgb = np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)
    return LoadedImage(rgb, grayscale=True, bits=bits)


def read_uint8_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, as benchmark code reads images (gray replicated, alpha dropped)."""
    img = _open(Path(path), max_pixels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        arr = np.clip(np.floor(arr + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) image, uint8 or float in [0, 1], -> (1, C, H, W) float32 tensor in [0, 1]: what networks take."""
    array = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def to_array(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) network output -> (H, W, C) float32 array (unclamped; see ``to_uint8``)."""
    x = x[0] if x.dim() == 4 else x
    return x.detach().float().permute(1, 2, 0).cpu().numpy()


def probe_image(height: int = 96, width: int = 96) -> torch.Tensor:
    """A smooth synthetic (1, 3, H, W) image in [0, 1] for numerical checks of model conversions.

    Random noise is no test for SPAN: its x255 input scaling drives activations far outside what images
    produce, where fp32 rounding is magnified; smooth gradients and a low-frequency pattern behave like photos.
    """
    yy, xx = np.mgrid[0:height, 0:width] / max(height - 1, width - 1, 1)
    rgb = np.stack([yy, xx, 0.5 + 0.4 * np.sin(6 * yy * xx)], axis=2)
    return to_tensor(rgb.astype(np.float32))


def check_image(path: str | os.PathLike | None = None) -> torch.Tensor:
    """A real photo (1, 3, H, W) to compare a converted or exported model with the original on: ``path``, else
    a crop of scikit-image's astronaut, else ``probe_image()`` where scikit-image is not installed."""
    if path is not None:
        return to_tensor(read_image(path).rgb)
    try:
        from skimage import data
    except ImportError:
        return probe_image()
    return to_tensor(data.astronaut()[64:192, 160:288])


def _quantise(x: np.ndarray, top: int, dtype: type) -> np.ndarray:
    """floor(top·clamp(x, 0, 1) + 0.5) as ``dtype``: the scaled copy is rounded and clamped in place, and the cast
    truncates, which is the floor of what is left (non-negative): a third of the CPU time of separate steps (a
    1920x1080 frame: 6 ms instead of 19 here), the same values."""
    y = np.multiply(x, float(top))
    y += 0.5
    np.clip(y, 0, top, out=y)
    with np.errstate(invalid="ignore"):  # NaN (a broken network) casts to 0; callers check outputs are finite
        return y.astype(dtype)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and round to 8 bits (what evaluation and saving both do)."""
    return _quantise(x, 255, np.uint8)


def to_uint16(x: np.ndarray) -> np.ndarray:
    return _quantise(x, 65535, np.uint16)


def write_image(path: str | os.PathLike, image: LoadedImage, quality: int = 95) -> None:
    """Write ``image`` atomically in the format given by ``path``'s suffix, keeping its kind (see policy)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DscloraError(f"unsupported output format {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})")
    if suffix == ".pgm" and not image.grayscale:
        raise DscloraError(f"{path}: PGM holds grayscale images only; write colour as .ppm or .png")
    keep_alpha = image.alpha is not None and suffix in _ALPHA_FORMATS
    if image.bits == 16 and not image.grayscale and suffix == ".png" and _write_deep_png(path, image, keep_alpha):
        return
    if image.grayscale:
        gray = image.rgb.mean(axis=2)
        if image.bits == 16 and suffix in (".png", ".tif", ".tiff") and not keep_alpha:
            pil = Image.fromarray(to_uint16(gray))
        else:
            pil = Image.fromarray(to_uint8(gray), mode=None)
            if keep_alpha:
                pil = Image.merge("LA", (pil, Image.fromarray(to_uint8(image.alpha))))
    else:
        pil = Image.fromarray(to_uint8(image.rgb))
        if keep_alpha:
            pil = Image.merge("RGBA", (*pil.split(), Image.fromarray(to_uint8(image.alpha))))
    if suffix == ".ppm" and pil.mode != "RGB":
        pil = pil.convert("RGB")  # Pillow would write a gray image as PGM data under the .ppm name
    options = {"quality": quality} if suffix in (".jpg", ".jpeg", ".webp") else {}
    try:
        with atomic_write(path) as tmp:
            pil.save(tmp, **options)
    except (OSError, ValueError) as exc:
        raise DscloraError(f"cannot write {path}: {exc}") from None


def _write_deep_png(path: Path, image: LoadedImage, keep_alpha: bool) -> bool:
    """Write a 16-bit RGB(A) PNG through pypng; False where pypng is not installed."""
    try:
        import png
    except ImportError:
        return False
    planes = [image.rgb, image.alpha[..., None]] if keep_alpha else [image.rgb]
    data = to_uint16(np.concatenate(planes, axis=2))
    height, width, channels = data.shape
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as handle:
            writer = png.Writer(width, height, greyscale=False, alpha=channels == 4, bitdepth=16)
            writer.write(handle, data.reshape(height, width * channels))
    except (OSError, ValueError, png.Error) as exc:
        raise DscloraError(f"cannot write {path}: {exc}") from None
    return True


@dataclass(frozen=True)
class ImageInfo:
    """What a fully decoded file tells before any work: its size as ``read_image`` sees it, and its kind."""

    height: int
    width: int
    grayscale: bool  # the output of a grayscale input is grayscale (see the policy table)
    frames: int  # animated GIF / WebP / APNG, multi-page TIFF: only the first frame is read
    rotated: bool = False  # EXIF swaps the axes: ``read_uint8_rgb`` (benchmarks, training) sees them unswapped

    @property
    def stored_size(self) -> tuple[int, int]:
        """(height, width) as stored, without EXIF rotation: what ``read_uint8_rgb`` returns."""
        return (self.width, self.height) if self.rotated else (self.height, self.width)


def _info(img: Image.Image) -> ImageInfo:
    w, h = img.size
    try:
        rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the axes
    except (OSError, ValueError, SyntaxError):
        rotated = False  # unreadable EXIF: reading the image reports it
    grayscale = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    frames = int(getattr(img, "n_frames", 1) or 1)
    return ImageInfo(w, h, grayscale, frames, True) if rotated else ImageInfo(h, w, grayscale, frames)


def verify_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode the (first frame of the) image once, keeping nothing: a truncated or corrupt body is found here,
    before any model is loaded, as a one-line error naming the file. Costs one decode: milliseconds per
    megapixel, against seconds per megapixel for the network."""
    path = Path(path)
    with _open_header(path, max_pixels) as img:
        info = _info(img)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DscloraError(f"cannot decode {path} (truncated or corrupt): {exc}") from None
    return info


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name; hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
