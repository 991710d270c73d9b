"""Video files through PyAV (the optional ``[video]`` extra, which carries FFmpeg's own libraries): probing,
decoding to RGB, encoding, and copying every other stream untouched.

What an upscaled video keeps of its input:

| of the input | in the output |
|---|---|
| the video stream (the first one that is not cover art) | every frame, upscaled and encoded with the asked codec; each frame keeps its time stamp and duration in the input's time base (variable frame rate too), so the frame count, frame rate and duration are the input's |
| audio, subtitle, data and attachment streams, cover art, further video streams | copied packet by packet, bytes and time stamps unchanged (nothing re-encoded); their metadata and dispositions (default, forced, language, title) too |
| colour range, primaries, transfer, matrix | tagged on the output as on the input; frames are converted to RGB with the input's matrix and range and back with the same |
| an untagged matrix | taken as players guess it (BT.709 from 1280 columns or 720 rows up, BT.601 below) and the output tagged with it: an SD input upscaled to HD would otherwise change colour in players, which guess BT.709 for HD |
| rotation (a display matrix) | applied to the pixels: PyAV cannot tag an encoded stream with a rotation, so the output is stored upright and displays the same |
| sample aspect ratio | kept, so the display aspect ratio is the input's |
| container metadata, chapters | copied (``--start`` / ``--duration`` shift and clip the chapters) |
| bit depth | 8-bit video runs through the model in 8 bits, deeper video in 16 |

Matroska cannot store a time before 0: where a stream starts before 0 (AAC's encoder delay in an MP4, 21 ms at
48 kHz), FFmpeg shifts every stream of an ``.mkv`` output alike by that much, as its own remuxing does (sync
kept); MP4 and MOV outputs keep the times exactly (edit lists).

Not kept: an alpha channel (the model sees RGB; a note says so), stream-wide HDR side data (mastering display,
content light level), a mirrored display matrix's flip; interlaced video is upscaled as progressive frames.
A stream the output container cannot carry (a data stream in Matroska, MP4's ``mov_text`` subtitles in
Matroska) is refused before any work, with the container to use instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from dsclora.errors import DscloraError

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".flv", ".wmv",
    ".ogv", ".3gp", ".mxf", ".nut", ".y4m",
)  # fmt: skip
DEFAULT_CONTAINER = ".mkv"  # carries any codec, subtitles and attachments
DEFAULT_CODEC = "libx264"
CODEC_ALIASES = {"h264": "libx264", "x264": "libx264", "h265": "libx265", "hevc": "libx265", "x265": "libx265"}
CODEC_ALIASES |= {"av1": "libsvtav1", "vp9": "libvpx-vp9"}
# Constant-quality defaults that are visually lossless: 18 for x264 (FFmpeg's H.264 encoding guide: "consider
# 17 or 18 to be visually lossless or nearly so"); x265 spends ~5 CRF steps less for the same quality (FFmpeg's
# H.265 guide: its default 28 "should visually correspond to libx264 video at CRF 23"), so 23.
DEFAULT_CRF = {"libx264": 18, "libx265": 23}
# x264's "veryfast" preset: on upscaled 1080p frames at CRF 18 it takes 20 ms of CPU a frame against medium's
# 57, for 0.6 dB less RGB PSNR to the network's frames (42.5 against 43.1 dB) at a slightly smaller size
# (benchmarks/results/video.json, libx264_crf18_presets): encoding stays a small part of the work, also beside a
# GPU. ``--codec-option preset=medium`` asks for x264's own default.
PRESETS = {"libx264": "veryfast"}
# x265 and SVT-AV1 print their banners and notes straight to stderr: errors only
QUIET = {"libx265": {"x265-params": "log-level=error"}}
CRF_CODECS = ("libx264", "libx265", "libsvtav1", "libvpx-vp9")  # the encoders --crf drives
# The CRF each takes (FFmpeg's option tables: libx264 / libx265 0-51 at 8 bits, SVT-AV1 and libvpx-vp9 0-63)
CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libsvtav1": (0, 63), "libvpx-vp9": (0, 63)}
LOSSLESS_RGB = {"ffv1": ("bgr0", "gbrp16le")}  # (8-bit, deeper): the model's RGB output, kept exactly
INSTALL_HINT = "pip install 'dsclora[video]'"
TRAILING_SECONDS = 2.0  # how far behind the video another stream's packets may come in a file (muxers: < 1 s)
# FFmpeg demuxers of still images and of text shown as pictures (tty): what they read is no video
_NOT_VIDEO_DEMUXERS = re.compile(r"^(image2|.*_pipe|tty)$")
_UNSPECIFIED, _RGB, _BT709, _BT601 = 2, 0, 1, 6
# Tags that describe the encoded video bytes (Matroska statistics, the encoder) and so go stale when re-encoded
_STALE_TAG = re.compile(r"^(encoder|duration|bps|number_of_frames|number_of_bytes|_statistics_.*)(-.*)?$", re.I)


def require_av() -> Any:
    """The ``av`` module, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise DscloraError(f"videos need PyAV, the optional video extra: {INSTALL_HINT}") from None
    return av


def have_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _reason(exc: Exception) -> str:
    """FFmpeg's own words for an error, without PyAV's errno prefix and call details."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(";")[0].strip()


# ------------------------------------------------------------------------------------------------ probing


@dataclass(frozen=True)
class Colour:
    """AVColor* codes: range (1 limited, 2 full), matrix, primaries, transfer (2 / 0: unspecified)."""

    range: int
    matrix: int
    primaries: int
    transfer: int


@dataclass(frozen=True)
class VideoInfo:
    """What probing a video found, before any work: enough to plan, check and size the job."""

    path: Path
    width: int  # of the upright frames the model sees (rotation applied)
    height: int
    frames: int  # expected frame count (0: the file does not say)
    duration: float | None  # seconds of video, where the file says
    duration_exact: bool  # the video stream's own duration (not the container's, which is the longest stream's)
    rate: Fraction | None  # average frame rate
    codec: str
    pix_fmt: str
    deep: bool  # more than 8 bits per component: processed in 16 bits
    quarter_turns: int  # counter-clockwise quarter turns that make a decoded frame upright
    colour: Colour
    others: tuple[str, ...] = ()  # the streams copied as they are, described
    notes: tuple[str, ...] = ()  # what is not kept, said before any work

    def describe(self) -> str:
        rate = f"{float(self.rate):.5g} frames/s" if self.rate else "unknown rate"
        count = f"{self.frames} frames" if self.frames else "frame count unknown"
        return f"{self.width}x{self.height} {self.codec} {self.pix_fmt}, {rate}, {count}"


_ATTACHED_PIC = 1 << 10  # AV_DISPOSITION_ATTACHED_PIC: cover art, a video stream of one still picture


def _moving(stream: Any) -> bool:
    return not int(stream.disposition) & _ATTACHED_PIC


def _main_stream(container: Any, path: Path) -> Any:
    """The video stream that is upscaled: the first one that is not cover art."""
    streams = [s for s in container.streams.video if _moving(s)]
    if not streams:
        raise DscloraError(f"{path}: no video stream (if it is a video, it is damaged or cut short)")
    return streams[0]


def _video_duration(container: Any, stream: Any) -> tuple[float | None, bool]:
    """(seconds of the video stream, whether the file states them for that stream): its own duration or
    Matroska's DURATION tag; else the container's, which is the longest stream's (audio may outlast video)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), True
    tag = next((v for k, v in stream.metadata.items() if k.upper().startswith("DURATION")), None)
    match = re.match(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$", tag.strip()) if tag else None
    if match:
        h, m, s = match.groups()
        return int(h) * 3600 + int(m) * 60 + float(s), True
    return (container.duration / 1e6 if container.duration else None), False


def _bit_depth(pix_fmt: Any) -> int:
    return max((c.bits for c in pix_fmt.components), default=8)


def _guess_matrix(width: int, height: int) -> int:
    """What players assume for an untagged matrix (mpv, VLC, browsers): BT.709 for HD, BT.601 below."""
    return _BT709 if width >= 1280 or height > 576 else _BT601


def _colour(frame: Any, width: int, height: int) -> Colour:
    matrix = int(frame.colorspace)
    if matrix in (_UNSPECIFIED, 3):  # unspecified or reserved
        matrix = _guess_matrix(width, height)
    return Colour(int(frame.color_range), matrix, int(frame.color_primaries), int(frame.color_trc))


def _describe_stream(stream: Any) -> str:
    context = stream.codec_context
    name = context.name if context is not None else (getattr(stream, "name", None) or "")
    language = stream.metadata.get("language")
    label = f"#{stream.index} {stream.type} {name}".rstrip()
    return label + (f" ({language})" if language and language != "und" else "")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open ``path``, decode its first frame (which proves the codec works and gives the colour tags and the
    rotation frames carry) and describe the job; a one-line error where it is not a readable video."""
    av = require_av()
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block FFmpeg
        raise DscloraError(f"{path} is not a regular file; give a video file")
    if not path.is_file():
        raise DscloraError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DscloraError(f"empty file (0 bytes): {path}")
    try:
        with av.open(str(path)) as container:
            stream = _main_stream(container, path)
            first = next(container.decode(stream), None)
            if first is None:
                raise DscloraError(f"{path}: its video stream has no frame that decodes (damaged or cut short?)")
            turns = round(first.rotation / 90) % 4 if first.rotation else 0
            width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
            duration, exact = _video_duration(container, stream)
            rate = Fraction(stream.average_rate) if stream.average_rate else None
            frames = stream.frames or (round(duration * rate) if duration and rate else 0)
            pix_fmt = first.format
            others = tuple(_describe_stream(s) for s in container.streams if s.index != stream.index)
            notes = []
            if any(c.is_alpha for c in pix_fmt.components):
                notes.append(f"{path.name}: its alpha channel is not kept (the model sees RGB)")
            extra = [f"#{s.index}" for s in container.streams.video if s.index != stream.index and _moving(s)]
            if extra:
                notes.append(f"{path.name}: only video stream #{stream.index} is upscaled; {', '.join(extra)} copied")
            info = VideoInfo(
                path, width, height, frames, duration, exact, rate, stream.codec_context.name, pix_fmt.name,
                _bit_depth(pix_fmt) > 8, turns, _colour(first, first.width, first.height), others, tuple(notes),
            )  # fmt: skip
    except av.error.FFmpegError as exc:
        raise DscloraError(f"cannot read {path} as a video: {_reason(exc)}") from None
    return info


def media_without_video(path: str | os.PathLike) -> str:
    """Where FFmpeg reads ``path`` as media with no video stream (an audio file), a line saying so; else ""
    (no PyAV, not media, or with pictures)."""
    if not have_av() or not Path(path).is_file():
        return ""
    import av

    try:
        with av.open(str(path)) as container:
            kinds = sorted({s.type for s in container.streams})
            if not kinds or container.streams.video:
                return ""
    except av.error.FFmpegError:
        return ""
    return f"{path}: no video stream, nothing to upscale (it holds {' and '.join(kinds)} only)"


def looks_like_video(path: str | os.PathLike, image_suffixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is to be treated as a video: a video suffix, or, for a suffix that is neither a video's nor
    an image's (none, ``.gif``, ``.dat``...), a file that Pillow cannot open and FFmpeg reads as moving pictures."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix in image_suffixes or not path.is_file() or not have_av():
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return False
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    import av

    try:
        with av.open(str(path)) as container:
            if _NOT_VIDEO_DEMUXERS.match(container.format.name):
                return False
            _main_stream(container, path)
            return True
    except (av.error.FFmpegError, DscloraError):
        return False


# ------------------------------------------------------------------------------------------------ encoding choices


@dataclass(frozen=True)
class Encoding:
    """How the upscaled frames are encoded: the encoder, its pixel format and its options."""

    codec: str
    pix_fmt: str
    options: dict[str, str]

    def describe(self) -> str:
        settings = [f"{key} {self.options[key]}" for key in ("crf", "preset") if key in self.options]
        return " ".join([self.codec, self.pix_fmt, *settings])


def choose_encoding(
    codec: str | None, crf: int | None, pix_fmt: str | None, info: VideoInfo, extra: dict[str, str] | None = None
) -> Encoding:
    """The encoder, pixel format and options (``extra``: the user's, over ours) for ``info``'s output; every
    refusal before any work (an option the encoder does not know is refused by ``check_output``).

    Pixel format by default: ``ffv1`` stores the model's RGB output exactly (``bgr0``, or 16-bit planar RGB
    for deep video); any other encoder the input's own format where it can, else 4:2:0 at the input's depth.
    """
    av = require_av()
    name = CODEC_ALIASES.get((codec or DEFAULT_CODEC).lower(), codec or DEFAULT_CODEC)
    try:
        encoder = av.codec.Codec(name, "w")
    except Exception:
        raise DscloraError(
            f"--codec {codec}: this FFmpeg has no such encoder (try h264, h265, av1, vp9, ffv1)"
        ) from None
    if encoder.type != "video":
        raise DscloraError(f"--codec {codec}: {name} encodes {encoder.type}, not video")
    formats = [f.name for f in (encoder.video_formats or [])]
    if pix_fmt is not None:
        if formats and pix_fmt not in formats:
            raise DscloraError(f"--pix-fmt {pix_fmt}: {name} cannot write it (it writes {', '.join(formats)})")
        chosen = pix_fmt
    elif name in LOSSLESS_RGB:
        chosen = LOSSLESS_RGB[name][info.deep]
    else:
        wanted = [info.pix_fmt, "yuv420p10le" if info.deep else "yuv420p", "yuv420p"]
        chosen = next((f for f in wanted if not formats or f in formats), formats[0] if formats else info.pix_fmt)
    options = ({"preset": PRESETS[name]} if name in PRESETS else {}) | QUIET.get(name, {})
    if name == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # read by SVT-AV1 when an encoder starts
    if crf is not None and name not in CRF_CODECS:
        raise DscloraError(f"--crf applies to {', '.join(CRF_CODECS)}; {name} has no constant-quality factor")
    low, high = CRF_RANGES.get(name, (crf, crf))
    if crf is not None and not low <= crf <= high:
        raise DscloraError(f"--crf {crf}: {name} takes {low} to {high} (lower is better quality)")
    quality = crf if crf is not None else DEFAULT_CRF.get(name)
    if quality is not None:
        options["crf"] = str(quality)
        if name == "libvpx-vp9":
            options["b"] = "0"  # constant quality, no bitrate target (FFmpeg's VP9 guide: -b:v 0)
    return Encoding(name, chosen, options | (extra or {}))


def output_format(path: str | os.PathLike) -> str:
    """FFmpeg's muxer for ``path``'s suffix (``matroska`` for ``.mkv``), or a one-line error."""
    av = require_av()
    try:
        with av.open(str(path), "w") as container:  # allocates a muxer only: nothing is written
            return container.format.name
    except ValueError:
        raise DscloraError(f"{path}: FFmpeg writes no container with the suffix {Path(path).suffix!r}") from None


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class DecodedFrame:
    """One upright RGB frame and its timing in the video stream's time base."""

    rgb: np.ndarray  # (H, W, 3) uint8, or uint16 for deep video
    pts: int
    duration: int


def _sws_flags() -> int:
    """Bicubic, full chroma resolution in and out, accurate rounding: no chroma shift through RGB and back."""
    from av.video.reformatter import Interpolation as I

    return int(I.BICUBIC | I.ACCURATE_RND | I.FULL_CHR_H_INT | I.FULL_CHR_H_INP)


def _seconds_to(value: float, time_base: Fraction) -> int:
    return round(Fraction(value) / time_base)


class VideoReader:
    """The file's packets in order: the video stream's decoded frames as ``DecodedFrame``, every other stream's
    packets as they are (to be copied). ``start`` / ``duration`` (seconds) keep a piece, its times shifted to 0.

    After the last item it checks that the video reached the end the file announced: a file cut in the middle
    otherwise ends early without any error from FFmpeg.
    """

    def __init__(self, info: VideoInfo, start: float = 0.0, duration: float | None = None) -> None:
        av = require_av()
        self.info, self.start, self.end = info, start, None if duration is None else start + duration
        try:
            self.container = av.open(str(info.path))
        except av.error.FFmpegError as exc:
            raise DscloraError(f"cannot read {info.path} as a video: {_reason(exc)}") from None
        self.stream = _main_stream(self.container, info.path)
        self.stream.thread_type = "AUTO"  # frame and slice threads in the decoder
        self.time_base = Fraction(self.stream.time_base)
        self.video_end = 0.0  # seconds (input time) the decoded video reached
        self.frames = 0

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _rgb(self, frame: Any) -> np.ndarray:
        colour = self.info.colour
        frame.colorspace = colour.matrix  # the matrix swscale converts with (an untagged one as players guess it)
        fmt = "rgb48le" if self.info.deep else "rgb24"
        rgb = frame.reformat(format=fmt, interpolation=_sws_flags()).to_ndarray()
        if self.info.quarter_turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.info.quarter_turns))
        return rgb

    def _frames(self, packet: Any) -> Iterator[DecodedFrame]:
        tb = self.time_base
        default = _seconds_to(1 / float(self.info.rate), tb) if self.info.rate else 1
        shift = _seconds_to(self.start, tb)
        for frame in packet.decode():
            pts = frame.pts if frame.pts is not None else (self.frames * default)
            duration = frame.duration or default
            seconds = float(pts * tb)
            self.video_end = max(self.video_end, seconds + float(duration * tb))
            if self._outside(seconds):
                continue
            self.frames += 1
            yield DecodedFrame(self._rgb(frame), pts - shift, duration)

    def _outside(self, seconds: float) -> bool:
        """Whether a time falls outside the kept piece. Without ``--start`` nothing before the end is dropped:
        an audio codec's priming packet has a negative time stamp (AAC's 1024 samples)."""
        before = self.start > 0 and seconds + 1e-6 < self.start
        return before or (self.end is not None and seconds >= self.end - 1e-6)

    def _keep(self, packet: Any) -> bool:
        """Whether a copied packet falls in the kept piece (its time stamps are then shifted like the frames')."""
        if packet.size == 0:
            return False  # the demuxer's end-of-stream marker
        if not self.start and self.end is None:
            return True
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            return False
        if self._outside(float(stamp * packet.time_base)):
            return False
        shift = _seconds_to(self.start, Fraction(packet.time_base))
        packet.pts = None if packet.pts is None else packet.pts - shift
        packet.dts = None if packet.dts is None else packet.dts - shift
        return True

    def _past_end(self, packet: Any) -> bool:
        """A packet stamped ``TRAILING_SECONDS`` past the piece's end: nothing of the piece can follow it."""
        stamp = packet.dts if packet.dts is not None else packet.pts
        return stamp is not None and float(stamp * packet.time_base) >= self.end + TRAILING_SECONDS

    def __iter__(self) -> Iterator[DecodedFrame | Any]:
        av = require_av()
        at = self.start
        try:
            if self.start:
                self.container.seek(_seconds_to(self.start, self.time_base), stream=self.stream)
            for packet in self.container.demux():
                if self.end is not None and self.video_end >= self.end:  # the video is done: the other streams'
                    if self._past_end(packet):  # packets may trail it in the file by a little
                        break
                    if packet.stream.index == self.stream.index:
                        continue
                if packet.stream.index == self.stream.index:
                    for frame in self._frames(packet):
                        at = float(frame.pts * self.time_base) + self.start
                        yield frame
                elif self._keep(packet):
                    yield packet
        except av.error.FFmpegError as exc:
            raise DscloraError(f"{self.info.path}: damaged video near {at:.2f} s: {_reason(exc)}") from None
        self._check_complete()

    def _check_complete(self) -> None:
        expected = self.info.duration
        if self.end is not None:
            expected = self.end if expected is None else min(expected, self.end)
        frame = 1 / float(self.info.rate) if self.info.rate else 0.04
        if self.frames == 0:
            raise DscloraError(f"{self.info.path}: no video frame in the asked piece (--start past the end?)")
        # half a second or two frames of slack; more where only the container's duration (the longest
        # stream's: audio may outlast the video) is known
        slack = max(0.5, 2 * frame) if self.info.duration_exact else max(2.0, 0.1 * (expected or 0))
        if expected is not None and self.video_end < expected - slack:
            raise DscloraError(
                f"{self.info.path}: damaged or cut short: its video ends at {self.video_end:.2f} s, "
                f"the file says {expected:.2f} s"
            )

    def chapters(self) -> list[dict]:
        """The container's chapters in the kept piece, shifted like the frames."""
        kept = []
        for chapter in self.container.chapters():
            tb = Fraction(chapter["time_base"])
            start, end = float(chapter["start"] * tb), float(chapter["end"] * tb)
            if end <= self.start or (self.end is not None and start >= self.end):
                continue
            start, end = max(start, self.start), end if self.end is None else min(end, self.end)
            shifted = {"start": _seconds_to(start - self.start, tb), "end": _seconds_to(end - self.start, tb)}
            kept.append(chapter | shifted)
        return kept


# ------------------------------------------------------------------------------------------------ writing


class VideoWriter:
    """An output with the upscaled video stream first and a copy of every other input stream, in order.

    ``target`` is a path (or a ``BytesIO`` for ``check_output``); ``fmt`` the muxer's name. Not thread-safe:
    one thread writes. Errors are one-line ``DscloraError``s.
    """

    def __init__(
        self, target: str | os.PathLike | io.BytesIO, fmt: str, reader: VideoReader, encoding: Encoding, scale: int
    ) -> None:
        av = require_av()
        self.av, self.reader = av, reader
        info, source = reader.info, reader.stream
        self.label = info.path.name
        try:
            self.container = av.open(target if isinstance(target, io.BytesIO) else str(target), "w", format=fmt)
        except (av.error.FFmpegError, ValueError) as exc:
            raise DscloraError(f"cannot write {target}: {_reason(exc)}") from None
        try:
            self._add_streams(info, source, encoding, scale)
        except BaseException:
            self.container.close()
            raise

    def _add_streams(self, info: VideoInfo, source: Any, encoding: Encoding, scale: int) -> None:
        av, out, src = self.av, self.container, self.reader.container
        out.metadata.update({k: v for k, v in src.metadata.items() if not _STALE_TAG.match(k)})
        try:
            video = out.add_stream(
                encoding.codec, rate=info.rate, time_base=self.reader.time_base, options=dict(encoding.options)
            )
            self.options = dict(encoding.options)
        except ValueError:  # the muxer does not take this codec
            raise DscloraError(
                f"{out.format.name} cannot hold {encoding.codec} video: choose another --codec (e.g. vp9 or av1 for "
                f".webm) or another container"
            ) from None
        video.width, video.height, video.pix_fmt = info.width * scale, info.height * scale, encoding.pix_fmt
        if source.sample_aspect_ratio:
            video.codec_context.sample_aspect_ratio = source.sample_aspect_ratio
        self.rgb_out = av.VideoFormat(encoding.pix_fmt).is_rgb
        colour = info.colour
        ctx = video.codec_context
        ctx.color_primaries, ctx.color_trc = colour.primaries, colour.transfer
        ctx.colorspace = _RGB if self.rgb_out else colour.matrix
        ctx.color_range = 0 if self.rgb_out else colour.range
        video.disposition = source.disposition
        video.metadata.update({k: v for k, v in source.metadata.items() if not _STALE_TAG.match(k)})
        self.video = video
        self.copies = {}
        for stream in src.streams:
            if stream.index == source.index:
                continue
            try:
                copy = out.add_stream_from_template(stream, opaque=True)
            except ValueError:
                raise DscloraError(
                    f"{self.label}: stream {_describe_stream(stream)} cannot be copied into {out.format.name}; "
                    f"name an output file with the input's container (e.g. -o OUT/{info.path.stem}_up"
                    f"{info.path.suffix or '.mkv'})"
                ) from None
            copy.metadata.update({k: v for k, v in stream.metadata.items() if not k.upper().startswith("DURATION")})
            copy.disposition = stream.disposition
            self.copies[stream.index] = copy
        chapters = self.reader.chapters()
        if chapters:
            out.set_chapters(chapters)
        self.matrix = colour.matrix
        self.range = colour.range or 1
        self.frame_format = "rgb48le" if info.deep else "rgb24"

    def start(self) -> None:
        """Open the encoder and write the header: where a muxer refuses a stream, before any frame."""
        try:
            self.container.start_encoding()
        except (self.av.error.FFmpegError, ValueError) as exc:
            rejected = self._rejected_option()
            if rejected:
                raise DscloraError(rejected) from None
            raise DscloraError(
                f"{self.label}: {self.container.format.name} cannot hold these streams ({_reason(exc)}); "
                f"try the input's container, e.g. -o OUT/{self.reader.info.path.stem}_up{self.reader.info.path.suffix}"
            ) from None

    def _rejected_option(self) -> str:
        """After the encoder refused to open: the first of its options that a small encoder of the same kind
        refuses on its own, as a line naming it ("" if none does, so the cause is elsewhere)."""
        ctx = self.video.codec_context
        for key, value in self.options.items():
            probe_ctx = self.av.CodecContext.create(ctx.name, "w")
            probe_ctx.width, probe_ctx.height, probe_ctx.pix_fmt = 64, 64, ctx.pix_fmt
            probe_ctx.time_base = Fraction(1, 25)
            probe_ctx.options = {key: value}
            try:
                probe_ctx.open()
            except (self.av.error.FFmpegError, ValueError) as exc:
                return f"--codec-option {key}={value}: {ctx.name} refuses it ({_reason(exc)})"
        return ""

    def write(self, rgb: np.ndarray, pts: int, duration: int) -> None:
        """Encode one upscaled RGB frame (uint8, or uint16 for deep video) at ``pts`` of the input's time base."""
        frame = self.av.VideoFrame.from_ndarray(rgb, format=self.frame_format)
        frame.colorspace = self.matrix  # the matrix swscale converts with
        if self.rgb_out:
            frame = frame.reformat(format=self.video.pix_fmt)
        else:
            frame = frame.reformat(format=self.video.pix_fmt, dst_color_range=self.range, interpolation=_sws_flags())
        frame.pts, frame.duration, frame.time_base = pts, duration, self.reader.time_base
        self._mux(self.video.encode(frame))

    def copy(self, packet: Any) -> None:
        packet.stream = self.copies[packet.stream.index]
        self._mux([packet])

    def _mux(self, packets: list) -> None:
        try:
            self.container.mux(packets)
        except (self.av.error.FFmpegError, ValueError) as exc:
            raise DscloraError(f"cannot write {self.label}'s output: {_reason(exc)}") from None

    def close(self) -> None:
        """Flush the encoder and write the trailer."""
        self._mux(self.video.encode(None))
        try:
            self.container.close()
        except self.av.error.FFmpegError as exc:
            raise DscloraError(f"cannot finish {self.label}'s output: {_reason(exc)}") from None

    def abandon(self) -> None:
        """Close after an error or an interrupt (the caller deletes the file)."""
        with contextlib.suppress(Exception):  # a half-written container may refuse its trailer; it is discarded
            self.container.close()


def check_output(info: VideoInfo, fmt: str, encoding: Encoding, scale: int) -> None:
    """Build the whole output in memory up to its header: refuses, before any work, a codec or pixel format the
    encoder or the muxer will not take and a stream the container cannot carry."""
    with VideoReader(info) as reader:
        writer = VideoWriter(io.BytesIO(), fmt, reader, encoding, scale)
        try:
            writer.start()
            unused = writer.video.codec_context.options  # what the encoder left of its options when it opened
        finally:
            writer.abandon()
    if unused:
        raise DscloraError(f"{encoding.codec} has no option {', '.join(sorted(unused))} (see --codec-option)")
