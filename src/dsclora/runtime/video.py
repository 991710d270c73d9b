"""``dsclora upscale`` on videos: which inputs are videos, where their outputs go, and the pipeline that decodes,
upscales and encodes at the same time.

Inputs: a named file, or a glob's match, is a video when ``data.video.looks_like_video`` says so (a video suffix,
or a suffix that is no image's and content FFmpeg reads as moving pictures); every video is probed (its first
frame decoded) and its encoder checked before the model is loaded. Folders contribute their images, as before.

Outputs: ``OUTDIR/<name><suffix>.mkv``, the suffix ``_x<scale>`` unless ``--suffix`` is given; or, for a single
video input, the file ``-o`` names (its suffix picks the container). Outputs never overwrite an input or each
other, existing ones follow ``--overwrite`` / ``--skip-existing`` like images, and each is written under a
temporary hidden name and renamed when complete: an error or Ctrl-C leaves no file that looks finished.

Pipeline: three threads joined by short bounded queues. The reader demuxes and decodes (FFmpeg works without
the GIL), the main thread runs the network, the writer converts to the output's pixel format, encodes and muxes,
copying the other streams' packets in their order. The network sees one frame at a time on a CPU (pairs of
480x270 frames gain nothing on the fastest CPU paths, ONNX Runtime and compile: ``benchmarks/video.py``) and on
a GPU up to ``MAX_BATCH`` whole frames: as many as fit ``--memory-budget`` at the peak memory one frame's
forward is measured to take (a short last batch is padded, so a compiled back-end sees one shape).
"""

from __future__ import annotations

import glob
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.images import IMAGE_SUFFIXES, to_array, to_tensor, to_uint8, to_uint16
from dsclora.data.video import (
    DEFAULT_CONTAINER,
    VIDEO_SUFFIXES,
    DecodedFrame,
    Encoding,
    VideoInfo,
    VideoReader,
    VideoWriter,
    check_output,
    choose_encoding,
    looks_like_video,
    output_format,
    probe,
)
from dsclora.errors import DscloraError
from dsclora.fs import atomic_write, check_output_folder, check_outputs
from dsclora.runtime.tiling import NonFiniteOutput, TiledUpscaler
from dsclora.runtime.upscale import Existing, check_name_lengths, check_suffix

MAX_BATCH = 8
QUEUE_FRAMES = 4  # decoded (small) frames waiting for the network, per frame of a batch
ENCODER_SLACK = 3  # upscaled (large; on a GPU, in its memory) frames waiting for the encoder, beyond one batch
_END = object()


@dataclass(frozen=True)
class VideoOptions:
    """The video-only options of ``upscale``."""

    codec: str | None = None
    crf: int | None = None
    pix_fmt: str | None = None
    start: float = 0.0
    duration: float | None = None
    codec_options: dict[str, str] = field(default_factory=dict)

    def given(self) -> list[str]:
        flags = {"--codec": self.codec, "--crf": self.crf, "--pix-fmt": self.pix_fmt, "--duration": self.duration}
        given = [flag for flag, value in flags.items() if value is not None]
        return given + (["--start"] if self.start else []) + (["--codec-option"] if self.codec_options else [])


def frames_to_upscale(info: VideoInfo, options: VideoOptions) -> int:
    """Frames of ``info`` that ``--start`` / ``--duration`` keep (an estimate where the file does not say)."""
    total = info.frames or 1
    if info.rate and (options.start or options.duration is not None):
        left = (info.duration or total / float(info.rate)) - options.start
        if options.duration is not None:
            left = min(left, options.duration)
        total = min(total, max(1, round(left * float(info.rate))))
    return total


@dataclass(frozen=True)
class VideoJob:
    info: VideoInfo
    dst: Path
    fmt: str  # FFmpeg's muxer
    encoding: Encoding


def split_inputs(inputs: Sequence[str], recursive: bool = False) -> tuple[list[str], list[Path]]:
    """(inputs for the image plan, video files): named files and glob matches that are videos taken out."""
    images: list[str] = []
    videos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images.append(item)
            continue
        matches = [path] if path.is_file() else sorted(Path(m) for m in glob.glob(item, recursive=recursive))
        matches = [m for m in matches if m.is_file()]
        if not matches:
            images.append(item)  # the image plan says "no such file"
            continue
        for match in matches:
            if looks_like_video(match, IMAGE_SUFFIXES):
                videos.append(match)
            else:
                images.append(str(match))
    return images, list(dict.fromkeys(videos))


@dataclass
class VideoRequest:
    """The video part of an ``upscale`` call, checked before the model is loaded."""

    images: list[str]  # what the image plan takes
    infos: list[VideoInfo]
    encodings: list[Encoding]
    options: VideoOptions
    file: Path | None = None  # the output file ``-o`` names, for a single video
    folder: Path = field(default_factory=Path)  # where outputs go

    @classmethod
    def from_inputs(cls, inputs: Sequence[str], output: str, recursive: bool, options: VideoOptions) -> VideoRequest:
        images, videos = split_inputs(inputs, recursive)
        target = Path(output)
        file = target if target.suffix.lower() in VIDEO_SUFFIXES and not target.is_dir() else None
        if file is not None and (len(videos) != 1 or images):
            raise DscloraError(
                f"-o {output} names a video file: give exactly one video input, or a folder for several inputs"
            )
        if not videos and options.given():
            raise DscloraError(f"{', '.join(options.given())}: video options, but no input is a video")
        if options.duration is not None and options.duration <= 0:
            raise DscloraError(f"--duration {options.duration}: must be > 0 seconds")
        if options.start < 0:
            raise DscloraError(f"--start {options.start}: must be >= 0 seconds")
        infos = [probe(path) for path in videos]  # every video's first frame decoded before any work
        encodings = [
            choose_encoding(options.codec, options.crf, options.pix_fmt, info, options.codec_options) for info in infos
        ]
        for info in infos:
            if info.duration is not None and options.start >= info.duration:
                raise DscloraError(f"--start {options.start:g} s: {info.path} is only {info.duration:.2f} s long")
        if file is not None:
            check_output_folder(file.parent, "-o")  # the file itself is checked by plan()
            output_format(file)
        folder = file.parent if file is not None else target
        return cls(images, infos, encodings, options, file, folder)

    def sizes(self) -> list[tuple[int, int]]:
        """One (height, width) per frame to upscale: what ``--tile auto`` and ``--backend auto`` weigh."""
        return [(info.height, info.width) for info in self.infos for _ in range(frames_to_upscale(info, self.options))]

    def plan(
        self, suffix: str | None, scale: int, existing: Existing, taken: Sequence[Path], also_read: Sequence[Path] = ()
    ) -> tuple[list[VideoJob], list[Path]]:
        """(jobs, outputs skipped as existing); the one output policy (``fs.check_outputs``: never an input, a
        video or what ``also_read`` names, never two inputs on one output), no clash with the images' outputs
        (``taken``), and each output checked up to its header (codec, pixel format, streams the container carries)."""
        if self.file is not None and suffix is not None:
            raise DscloraError("--suffix names outputs in a folder; -o already names the video file")
        if suffix is not None:
            check_suffix(suffix)
        suffix = f"_x{scale}" if suffix is None else suffix
        jobs: list[VideoJob] = []
        skipped: list[Path] = []
        dsts = [self.file or self.folder / f"{info.path.stem}{suffix}{DEFAULT_CONTAINER}" for info in self.infos]
        check_name_lengths(dsts, "--suffix" if self.file is None else "-o")
        clashes = [
            p for p, n in Counter([d.resolve() for d in dsts] + [Path(t).resolve() for t in taken]).items() if n > 1
        ]
        if clashes:
            raise DscloraError(f"several inputs would write {sorted(clashes)[0]}; rename them or use separate runs")
        check_outputs(
            "upscale",
            dsts,
            [*(info.path for info in self.infos), *also_read],
            overwrite=existing != "refuse",
            input_hint="choose another -o or --suffix",
            exists_hint="add --overwrite to replace it or --skip-existing to keep it",
        )
        for info, encoding, dst in zip(self.infos, self.encodings, dsts, strict=True):
            if dst.exists() and existing == "skip":
                skipped.append(dst)
                continue
            fmt = output_format(dst)
            check_output(info, fmt, encoding, scale)
            jobs.append(VideoJob(info, dst, fmt, encoding))
        for job in jobs:
            for note in job.info.notes:
                print(f"note: {note}", file=sys.stderr)
        return jobs, skipped


def frames_per_batch(per_frame_bytes: int, budget_bytes: int) -> int:
    """Whole frames per forward: as many as ``budget_bytes`` holds at ``per_frame_bytes`` each, 1 to ``MAX_BATCH``."""
    return max(1, min(MAX_BATCH, budget_bytes // max(per_frame_bytes, 1)))


def batch_size(device: torch.device, upscaler: TiledUpscaler, size: tuple[int, int], budget_bytes: int) -> int:
    """1 on a CPU or when frames are tiled; on a GPU, the frames whose memory fits ``budget_bytes`` at the peak one
    frame's forward takes there (measured on a frame of this size: any network, no estimate)."""
    h, w = size
    if device.type != "cuda" or (upscaler.tile and max(h, w) > upscaler.tile):
        return 1
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    upscaler(torch.rand(1, 3, h, w, device=device))
    torch.cuda.synchronize(device)
    return frames_per_batch(torch.cuda.max_memory_allocated(device) - base, budget_bytes)


class _Stopped(Exception):
    """Raised in a thread whose queue partner has stopped (an error or an interrupt elsewhere)."""


class _Channel:
    """A bounded queue between two threads that gives up as soon as the run stops."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = stop

    def put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self) -> object:
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stopped


def _thread(work: Callable[[], None], stop: threading.Event, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the main thread, which raises it
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _network_input(frames: list[DecodedFrame], batch: int, device: torch.device) -> torch.Tensor:
    arrays = [f.rgb if f.rgb.dtype == np.uint8 else f.rgb.astype(np.float32) / 65535.0 for f in frames]
    x = torch.cat([to_tensor(a) for a in arrays])
    if batch > 1 and len(frames) < batch:  # one shape for every forward
        x = torch.cat([x, x[-1:].expand(batch - len(frames), -1, -1, -1)])
    return x.to(device)


def _pipeline(
    reader: VideoReader, writer: VideoWriter, upscaler: TiledUpscaler, device: torch.device, batch: int, bar: tqdm
) -> int:
    """Decode, upscale and encode concurrently; the number of frames written."""
    stop = threading.Event()
    errors: list[BaseException] = []
    decoded, upscaled = _Channel(QUEUE_FRAMES * batch, stop), _Channel(batch + ENCODER_SLACK, stop)
    written = 0
    deep = reader.info.deep

    def read() -> None:
        for item in reader:
            decoded.put(item)
        decoded.put(_END)

    def write() -> None:
        nonlocal written
        while (item := upscaled.get()) is not _END:
            if isinstance(item, tuple):
                out, pts, duration = item
                array = to_array(out)
                writer.write(to_uint16(array) if deep else to_uint8(array), pts, duration)
                written += 1
                bar.update(1)
            else:
                writer.copy(item)
        writer.close()

    def compute(frames: list[DecodedFrame]) -> None:
        out = upscaler(_network_input(frames, batch, device))
        for i, frame in enumerate(frames):
            upscaled.put((out[i], frame.pts, frame.duration))

    threads = [_thread(read, stop, errors), _thread(write, stop, errors)]
    try:
        pending: list[DecodedFrame] = []
        while (item := decoded.get()) is not _END:
            if isinstance(item, DecodedFrame):
                pending.append(item)
                if len(pending) == batch:
                    compute(pending)
                    pending = []
            else:
                upscaled.put(item)
        if pending:
            compute(pending)
        upscaled.put(_END)
        while threads[1].is_alive():  # the writer flushes the encoder and writes the trailer
            threads[1].join(0.1)
    except _Stopped:
        pass
    finally:
        stop.set()
        for thread in threads:  # nothing closes a container a thread still uses
            while thread.is_alive():
                thread.join(0.1)
    if errors:
        raise errors[0]
    return written


def upscale_video(
    job: VideoJob, upscaler: TiledUpscaler, device: torch.device, options: VideoOptions, batch: int, progress: bool
) -> int:
    """Upscale one video into ``job.dst`` (written under a temporary name, renamed when complete); frames written."""
    with VideoReader(job.info, options.start, options.duration) as reader, atomic_write(job.dst) as tmp:
        writer = VideoWriter(tmp, job.fmt, reader, job.encoding, upscaler.scale)
        total = frames_to_upscale(job.info, options) if job.info.frames else None
        bar = tqdm(total=total, desc=job.info.path.name, unit="frame", disable=not progress, dynamic_ncols=True)
        try:
            written = _pipeline(reader, writer, upscaler, device, batch, bar)
        except BaseException:
            writer.abandon()
            raise
        finally:
            bar.close()
    return written


def run(
    jobs: list[VideoJob],
    upscaler: TiledUpscaler,
    device: torch.device,
    options: VideoOptions,
    progress: bool,
    budget_bytes: int = 2 << 30,
) -> int:
    """Upscale every video; a video that fails is reported and counted, the rest goes on."""
    failures = 0
    for job in jobs:
        info = job.info
        batch = batch_size(device, upscaler, (info.height, info.width), budget_bytes)
        copied = f"; copied: {', '.join(info.others)}" if info.others else ""
        print(f"{info.path}: {info.describe()} -> {job.dst} ({job.encoding.describe()}{copied})", file=sys.stderr)
        start = time.perf_counter()
        try:
            frames = upscale_video(job, upscaler, device, options, batch, progress)
        except DscloraError as exc:
            where = f" for {info.path}; no output written" if isinstance(exc, NonFiniteOutput) else ""
            print(f"dsclora: error: {exc}{where}", file=sys.stderr)
            failures += 1
            continue
        seconds = time.perf_counter() - start
        h, w = info.height * upscaler.scale, info.width * upscaler.scale
        print(f"wrote {job.dst}: {frames} frames {w}x{h} in {seconds:.1f} s ({frames / seconds:.2f} frames/s)")
    return failures
