"""The ``dsclora`` command line: the arguments of every command, their types and help, and ``main``.

What each command then does is in ``commands.py``. Every user-facing problem (a bad value, a missing file, a
broken image, an unknown checkpoint, an unwritable output) ends as one line on stderr and exit code 2, found
before any model is loaded or any pixel computed; outputs are written atomically, so a failure never leaves
a partial file.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from dsclora.errors import DscloraError
from dsclora.fs import no_space
from dsclora.version import __version__

EXIT_USAGE = 2
EXIT_FAILED = 1
WEIGHTS_HELP = (
    "the network: a name (default: the embedded model; dscf, span-tiny, span-ch28: see `dsclora weights list`), "
    "a checkpoint (.pth / .safetensors / a training run's latest.pt: SPAN, or any architecture spandrel detects "
    "with the [spandrel] extra), or a model spec file (.yaml: code, class, args, weights, scale, input_range, "
    "pad_to; importing its Python file runs that file's code, so use spec files you trust; a training run's "
    "checkpoint of such a network imports the Python file it records in the same way)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------------------ value types


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _scale(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"must be 1-8, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


MIN_TILE = 16  # smaller tiles compute mostly overlap (a 1-pixel tile of SPAN computes 43x43 pixels for each one)


def _tile(text: str) -> int | None:
    if text == "auto":
        return None
    value = _int_at_least(0)(text)
    if 0 < value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"must be 0 (whole images) or at least {MIN_TILE}, got {value}")
    return value


def _overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists (default: refuse); an input is never replaced",
    )


def _seconds(text: str) -> float:
    """SECONDS (e.g. 90 or 1.5) or [HH:]MM:SS[.FRACTION] (e.g. 1:30 or 0:01:30.5)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or [HH:]MM:SS, got {text!r}") from None
    if len(parts) > 3 or any(p < 0 for p in parts) or any(p >= 60 for p in parts[1:]):
        raise argparse.ArgumentTypeError(f"expected seconds or [HH:]MM:SS, got {text!r}")
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 256x256, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


# ------------------------------------------------------------------------------------------------ options


def _runtime_options(parser: argparse.ArgumentParser, tiling: bool = True, precision: str = "fp32") -> None:
    """--device, --backend, --precision (default ``precision``: auto where speed is the point, fp32 where figures
    are published) and, with ``tiling``, the tiling and self-ensemble options."""
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "channels_last", "compile", "onnxruntime"],
        help="how the network runs (default auto: the fastest path measured once per machine and printed, "
        "compile only when the job repays compiling, e.g. a folder with --tile); torch: eager NCHW reference; "
        "channels_last; compile: torch.compile; onnxruntime",
    )
    parser.add_argument(
        "--precision",
        default=precision,
        choices=["auto", "fp32", "bf16", "bf16-accurate", "fp16"],
        help=f"default {precision}. auto: the fastest precision this device computes natively whose output stays "
        "within 0.005 dB Y-PSNR and 8/255 of fp32 on reference images shipped with dsclora (checked and timed once "
        "per machine, network and back-end; printed with its reason; fp32 where bf16 is only emulated); fp32: "
        "exact; bf16-accurate: bf16 convs, fp32 where bf16 would cost accuracy; bf16: everything bf16 (fastest, "
        "~0.01-0.02 dB lower); fp16: GPU only",
    )
    if tiling:
        parser.add_argument(
            "--tile",
            type=_tile,
            default=None,
            metavar="N|auto|0",
            help=f"LR tile size in pixels, at least {MIN_TILE}; 0 = whole images; default auto: whole images unless one would need more "
            "than --memory-budget, then the largest tile that fits (printed)",
        )
        parser.add_argument(
            "--tile-overlap",
            type=_int_at_least(0),
            default=None,
            metavar="P",
            help="LR pixels of context around each tile (default: the model's receptive radius, 21 for SPAN, "
            "which makes tiled output equal untiled)",
        )
        parser.add_argument(
            "--self-ensemble",
            type=int,
            choices=[1, 8],
            default=1,
            help="8: average the network over the 8 flips / rotations of the input (x8 geometric self-ensemble: "
            "~0.1-0.2 dB better, 8 times the work); default 1",
        )
        parser.add_argument(
            "--memory-budget",
            type=_int_at_least(64),
            default=2048,
            metavar="MIB",
            help="estimated peak memory above which --tile auto tiles (default 2048 MiB)",
        )


def _video_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("videos (need the video extra: pip install 'dsclora[video]')")
    group.add_argument(
        "--codec",
        default=None,
        help="video encoder: h264 (libx264, the default), h265 (libx265), av1 (libsvtav1), vp9 (libvpx-vp9), ffv1 "
        "(lossless: stores the model's RGB output exactly), or any FFmpeg video encoder's name",
    )
    group.add_argument(
        "--crf",
        type=_int_at_least(0),
        default=None,
        help="constant quality of h264 / h265 / av1 / vp9, lower is better (default: visually lossless, 18 for "
        "h264 and 23 for h265; the encoder's own default for av1 and vp9)",
    )
    group.add_argument(
        "--pix-fmt",
        default=None,
        metavar="FMT",
        help="the encoded pixel format, e.g. yuv420p, yuv444p, yuv420p10le (default: the input's where the encoder "
        "takes it, else 4:2:0 at the input's bit depth; ffv1: RGB)",
    )
    group.add_argument(
        "--codec-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the encoder, repeatable, e.g. preset=medium (libx264 runs veryfast here unless told), "
        "tune=film, x265-params=...; one the encoder does not know is refused",
    )
    group.add_argument(
        "--start", type=_seconds, default=0.0, metavar="TIME", help="begin at this time (seconds or [HH:]MM:SS)"
    )
    group.add_argument(
        "--duration", type=_seconds, default=None, metavar="TIME", help="upscale only this long a piece (try first)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsclora",
        description="Train, merge, evaluate and deploy SPAN / DSCLoRA super-resolution models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser, help="what to do (each has --help)"
    )

    up = sub.add_parser(
        "upscale",
        help="super-resolve images, videos, folders or globs",
        description="Super-resolve images and videos. Inputs are never overwritten; existing outputs are refused "
        "unless --overwrite or --skip-existing says what to do. A video keeps its audio, subtitles and other "
        "streams (copied, not re-encoded), its time stamps, frame rate and colour tags; it is written as "
        "OUTDIR/<name>_x<S>.mkv, or as the file -o names.",
    )
    up.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image or video files, folders (their images) or glob patterns; a video is recognised by probing it",
    )
    up.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTDIR",
        help="folder for the results (created); for a single video input also a file name whose suffix picks the "
        "container (.mkv, .mp4, .mov, .webm, ...)",
    )
    up.add_argument("--weights", default=None, help=WEIGHTS_HELP + ", or bicubic (needs --scale); default: default")
    up.add_argument("--scale", type=_scale, default=None, help="upscaling factor; only needed for --weights bicubic")
    up.add_argument("--ext", default="png", help="output format by file suffix: png (default), jpg, webp, tif, bmp")
    up.add_argument(
        "--suffix",
        default=None,
        help="added to every output's name, e.g. _x4 (default: none for images, _x<S> for videos; no '/' or '..')",
    )
    up.add_argument("--recursive", action="store_true", help="also take images in sub-folders, mirroring the tree")
    existing = up.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    existing.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist, do the rest")
    up.add_argument(
        "--max-pixels",
        type=_int_at_least(1),
        default=None,
        help="refuse inputs with more pixels than this (default 16384²); raises Pillow's own bomb limit to match",
    )
    _runtime_options(up, precision="auto")
    _video_options(up)
    up.set_defaults(func="upscale")

    ev = sub.add_parser(
        "eval",
        help="PSNR / SSIM on benchmark folders",
        description="Evaluate on benchmark sets: Y-PSNR / SSIM (BT.601, border = scale) and the NTIRE kit's RGB PSNR.",
    )
    ev.add_argument("--weights", default=None, help=WEIGHTS_HELP + ", or bicubic (needs --scale); default: default")
    ev.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="DIR",
        help="benchmark folder (repeatable): <DIR>/x<S>/{HR,LR}, <DIR>/HR + <DIR>/LR_bicubic/X<S>, <DIR>/HR + "
        "<DIR>/LR, the NTIRE kit's <name>_HR + <name>_LR (NNNNx<S>.png), or HR images only (LR made with "
        "MATLAB bicubic and cached)",
    )
    ev.add_argument("--scale", type=_scale, default=None, help="upscaling factor (default: the model's)")
    ev.add_argument("--json", default=None, metavar="FILE", help="also write means and per-image rows as JSON")
    _overwrite_option(ev, "the --json file")
    _runtime_options(ev)
    ev.set_defaults(func="evaluate")

    pr = sub.add_parser(
        "profile",
        help="params, FLOPs, activations, convs, latency, memory",
        description="Efficiency figures as the NTIRE ESR challenge reports them; --ntire adds the kit's full report.",
    )
    pr.add_argument("--weights", default=None, help=WEIGHTS_HELP + "; default: default")
    pr.add_argument("--size", type=_size, default=(256, 256), help="input HxW in LR pixels (default 256x256, as NTIRE)")
    pr.add_argument("--runs", type=_int_at_least(1), default=10, help="timed forward passes (default 10)")
    pr.add_argument("--warmup", type=_int_at_least(0), default=2, help="untimed passes first (default 2)")
    pr.add_argument("--threads", type=_int_at_least(1), default=None, help="CPU threads (default: torch's choice)")
    pr.add_argument(
        "--ntire",
        action="store_true",
        help="the NTIRE kit's report: RGB PSNR and mean runtime over the images of --data (CUDA events on a GPU), "
        "max memory, FLOPs, params, activations, convs, and the NTIRE 2025 score against EFDN",
    )
    pr.add_argument("--data", default=None, metavar="DIR", help="with --ntire: the validation set (e.g. DIV2K_LSDIR)")
    pr.add_argument(
        "--efdn-ms",
        type=_positive_float,
        default=None,
        metavar="MS",
        help="with --ntire: EFDN's runtime on this device (the score's time term needs it; default: not scored)",
    )
    pr.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    _overwrite_option(pr, "the --json file")
    _runtime_options(pr, tiling=False)
    pr.set_defaults(func="profile")

    cv = sub.add_parser(
        "convert",
        help="rewrite a checkpoint between forms and formats",
        description="Read any supported checkpoint and write it in another form or format (checked to compute "
        "the same function). OUT's suffix sets the format: .safetensors or .pth / .pt.",
    )
    cv.add_argument("input", metavar="IN", help="checkpoint to read (any supported layout)")
    cv.add_argument("output", metavar="OUT", help="file to write (.safetensors, .pth or .pt)")
    cv.add_argument(
        "--to",
        default="deploy",
        choices=["deploy", "train"],
        help="deploy: one 3x3 conv per Conv3XC, LoRA merged (default); train: Conv3XC branches that "
        "collapse exactly to the same weights (BasicSR / spandrel layout)",
    )
    cv.add_argument(
        "--format", default=None, choices=["safetensors", "pth"], help="must agree with OUT's suffix (default: from it)"
    )
    _overwrite_option(cv, "OUT")
    cv.set_defaults(func="convert")

    tr = sub.add_parser(
        "train",
        help="train a DSCLoRA student or a SPAN from a YAML recipe",
        description="Train from a YAML recipe (see configs/). Every key and its meaning: "
        "`dsclora train RECIPE --print-config`. Under `torchrun --nproc_per_node=N` it runs DDP.",
    )
    tr.add_argument("config", metavar="CONFIG.yaml", help="recipe file, e.g. configs/dsclora_x4_ens.yaml")
    tr.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides in YAML syntax, e.g. optim.lr=1e-4"
    )
    fresh = tr.add_mutually_exclusive_group()
    fresh.add_argument("--resume", action="store_true", help="continue from <run.output>/latest.pt")
    fresh.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run.output that holds an earlier run's files, replacing them (default: refuse); "
        "the recipe's own inputs (model.base / init / teacher, data) are never replaced",
    )
    tr.add_argument("--print-config", action="store_true", help="print the resolved recipe with every key's meaning")
    tr.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    tr.set_defaults(func="train")

    mg = sub.add_parser(
        "merge",
        help="merge a training checkpoint into a plain deploy SPAN",
        description="`dsclora convert TRAIN_CKPT OUT --to deploy` for training checkpoints: ConvLoRA merged, "
        "Conv3XC collapsed, checked against the training form.",
    )
    mg.add_argument("checkpoint", metavar="TRAIN_CKPT", help="latest.pt or best.pt written by `dsclora train`")
    mg.add_argument("output", metavar="OUT", help="deploy model to write (.safetensors or .pth)")
    mg.add_argument("--no-ema", action="store_true", help="merge the raw weights instead of the EMA weights")
    _overwrite_option(mg, "OUT")
    mg.set_defaults(func="merge")

    dm = sub.add_parser(
        "demo",
        help="upscale sample photos (from scikit-image) and compare with bicubic",
        description="Make x<S> LR versions of sample photos, super-resolve them, report PSNR against bicubic.",
    )
    dm.add_argument(
        "-o", "--output", default="out/demo", metavar="OUTDIR", help="folder for the images (default out/demo)"
    )
    dm.add_argument("--weights", default=None, help=WEIGHTS_HELP + ", or bicubic (needs --scale); default: default")
    dm.add_argument("--scale", type=_scale, default=None, help="upscaling factor; only needed for --weights bicubic")
    dm.add_argument("--device", default="auto", help="cpu, cuda, mps, or auto (default)")
    dm.set_defaults(func="demo")

    ex = sub.add_parser(
        "export",
        help="write ONNX, NCNN, an NTIRE kit module, a spandrel/chaiNNer SPAN, or safetensors",
        description="Export a model for other tools; each export is checked before it is written, and an "
        "OpenModelDB-style JSON card is written beside it.",
    )
    ex.add_argument("--weights", default=None, help=WEIGHTS_HELP + "; default: default")
    ex.add_argument(
        "--format",
        required=True,
        choices=["onnx", "ncnn", "ntire", "spandrel", "safetensors"],
        help="onnx: checked in ONNX Runtime, output clamped, scale in its metadata; ncnn: .param/.bin via pnnx, "
        "checked in ncnn; ntire: teamNN_Name.py + .pth for the NTIRE kit (-o is a folder); spandrel: "
        "training-form SPAN (.pth or .safetensors) that collapses exactly to our weights; safetensors: our "
        "deploy format with its JSON config",
    )
    ex.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="file to write (ncnn: X gives X.param and X.bin; ntire: a folder)",
    )
    ex.add_argument("--opset", type=_int_at_least(7), default=17, help="onnx: opset (default 17)")
    ex.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16"], help="onnx: weights and compute (default fp32)"
    )
    ex.add_argument(
        "--io", default="fp32", choices=["fp32", "fp16"], help="onnx: dtype of the input and output (default fp32)"
    )
    ex.add_argument(
        "--static", type=_size, default=None, metavar="HxW", help="onnx: a fixed input size (default dynamic)"
    )
    ex.add_argument("--no-simplify", action="store_true", help="onnx: skip onnxslim even where it is installed")
    ex.add_argument("--team", type=_int_at_least(0), default=None, help="ntire: team number (the NN of teamNN_Name)")
    ex.add_argument("--name", default=None, help="ntire: model name (a Python identifier: the class and file name)")
    ex.add_argument("--no-card", action="store_true", help="do not write the JSON card beside the export")
    _overwrite_option(ex, "the exported files and their card")
    ex.add_argument(
        "--check-image", default=None, metavar="PATH", help="image the export is checked on (default: a sample photo)"
    )
    ex.set_defaults(func="export")

    wt = sub.add_parser(
        "weights", help="list or download named weights", description="The embedded model and the official checkpoints."
    )
    wt_sub = wt.add_subparsers(
        dest="weights_command", metavar="ACTION", required=True, parser_class=_Parser, help="list or download"
    )
    wt_sub.add_parser(
        "list", help="names, files and where they are found", description="Names, files and where they are found."
    ).set_defaults(func="weights_list")
    dl = wt_sub.add_parser(
        "download", help="fetch by URL into the cache, verifying sha256", description="Fetch named official weights."
    )
    dl.add_argument("name", help="registry name (dscf, span-tiny, span-ch28)")
    dl.set_defaults(func="weights_download")
    return parser


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a job scheduler) cleans up as Ctrl-C does: no temporary left


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        return _run(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(argv)
    finally:  # a caller's own handler (a test runner, an embedding program) comes back
        signal.signal(signal.SIGTERM, previous)


def _run(argv: Sequence[str] | None) -> int:
    if not os.environ.get("DSCLORA_DEBUG"):  # other libraries' and user networks' deprecation chatter
        warnings.filterwarnings("ignore", module=r"^(?!dsclora)")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.func == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra  # KEY=VALUE after a flag: argparse stops collecting positionals there
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:  # --help, --version, or a usage error already printed as one line
        return int(stop.code or 0)
    try:
        from dsclora import commands
        from dsclora.devices import keep_freed_memory

        keep_freed_memory()  # this process runs the job: its feature maps stay mapped between forwards
        return int(getattr(commands, args.func)(args) or 0)
    except DscloraError as exc:
        print(f"dsclora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `dsclora weights list | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("dsclora: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless asked for the traceback
        written = str(getattr(exc, "filename", None) or "")
        if isinstance(exc, OSError) and (
            full := no_space(exc, os.path.dirname(written) or ".", os.path.basename(written) or None)
        ):
            # a full disk under a write that is not atomic_write's (a log row, a folder being made)
            print(f"dsclora: error: {full}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("DSCLORA_DEBUG"):
            raise
        print(
            f"dsclora: internal error: {type(exc).__name__}: {exc} (DSCLORA_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
