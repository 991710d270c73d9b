"""The ``dsclora`` command line: argument parsing, checks before work, and one call into the package per command.

Every user-facing problem (a missing file, a broken image, an unknown checkpoint, an unwritable output) ends
as one line on stderr and a non-zero exit, and is found before any model is loaded or any pixel computed;
outputs are written atomically, so a failure never leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dsclora.errors import DscloraError

EXIT_USAGE = 2
EXIT_FAILED = 1
WEIGHTS_HELP = "a checkpoint file (.pth / .safetensors / latest.pt) or a name: default (the embedded model), dscf, "
WEIGHTS_HELP += "span-tiny, span-ch28 (see `dsclora weights list`)"


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


def _tile(text: str) -> int | None:
    return None if text == "auto" else _int_at_least(0)(text)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 256x256, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


# ------------------------------------------------------------------------------------------------ options


def _runtime_options(parser: argparse.ArgumentParser, tiling: bool = True) -> None:
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
        default="fp32",
        choices=["fp32", "bf16", "bf16-accurate", "fp16"],
        help="fp32 (exact; default); bf16 (fastest on CPUs with bf16, ~0.01 dB lower); bf16-accurate (bf16 convs, "
        "fp32 elsewhere: within 0.005 dB); fp16 (GPU only)",
    )
    if tiling:
        parser.add_argument(
            "--tile",
            type=_tile,
            default=None,
            metavar="N|auto|0",
            help="LR tile size in pixels; 0 = whole images; default auto: whole images unless one would need more "
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsclora",
        description="Train, merge, evaluate and deploy SPAN / DSCLoRA super-resolution models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser, help="what to do (each has --help)"
    )

    up = sub.add_parser(
        "upscale",
        help="super-resolve images, folders or globs",
        description="Super-resolve images. Inputs are never overwritten; existing outputs are refused unless "
        "--overwrite or --skip-existing says what to do.",
    )
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (their images) or glob patterns")
    up.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created)")
    up.add_argument("--weights", default=None, help=WEIGHTS_HELP + ", or bicubic (needs --scale); default: default")
    up.add_argument("--scale", type=_scale, default=None, help="upscaling factor; only needed for --weights bicubic")
    up.add_argument("--ext", default="png", help="output format by file suffix: png (default), jpg, webp, tif, bmp")
    up.add_argument("--suffix", default="", help="added to every output's name, e.g. _x4 (default: none)")
    up.add_argument("--recursive", action="store_true", help="also take images in sub-folders, mirroring the tree")
    existing = up.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    existing.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist, do the rest")
    up.add_argument(
        "--max-pixels", type=_int_at_least(1), default=None, help="refuse inputs larger than this (default 16384²)"
    )
    _runtime_options(up)
    up.set_defaults(func=_cmd_upscale)

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
    _runtime_options(ev)
    ev.set_defaults(func=_cmd_eval)

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
        type=float,
        default=None,
        metavar="MS",
        help="with --ntire: EFDN's runtime on this device (the score's time term needs it; default: not scored)",
    )
    pr.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    _runtime_options(pr, tiling=False)
    pr.set_defaults(func=_cmd_profile)

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
    cv.set_defaults(func=_cmd_convert)

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
    tr.add_argument("--resume", action="store_true", help="continue from <run.output>/latest.pt")
    tr.add_argument("--print-config", action="store_true", help="print the resolved recipe with every key's meaning")
    tr.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    tr.set_defaults(func=_cmd_train)

    mg = sub.add_parser(
        "merge",
        help="merge a training checkpoint into a plain deploy SPAN",
        description="`dsclora convert TRAIN_CKPT OUT --to deploy` for training checkpoints: ConvLoRA merged, "
        "Conv3XC collapsed, checked against the training form.",
    )
    mg.add_argument("checkpoint", metavar="TRAIN_CKPT", help="latest.pt or best.pt written by `dsclora train`")
    mg.add_argument("output", metavar="OUT", help="deploy model to write (.safetensors or .pth)")
    mg.add_argument("--no-ema", action="store_true", help="merge the raw weights instead of the EMA weights")
    mg.set_defaults(func=_cmd_merge)

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
    dm.set_defaults(func=_cmd_demo)

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
    ex.add_argument(
        "--check-image", default=None, metavar="PATH", help="image the export is checked on (default: a sample photo)"
    )
    ex.set_defaults(func=_cmd_export)

    wt = sub.add_parser(
        "weights", help="list or download named weights", description="The embedded model and the official checkpoints."
    )
    wt_sub = wt.add_subparsers(
        dest="weights_command", metavar="ACTION", required=True, parser_class=_Parser, help="list or download"
    )
    wt_sub.add_parser(
        "list", help="names, files and where they are found", description="Names, files and where they are found."
    ).set_defaults(func=_cmd_weights_list)
    dl = wt_sub.add_parser(
        "download", help="fetch by URL into the cache, verifying sha256", description="Fetch named official weights."
    )
    dl.add_argument("name", help="registry name (dscf, span-tiny, span-ch28)")
    dl.set_defaults(func=_cmd_weights_download)
    return parser


def _version() -> str:
    from dsclora.version import __version__

    return __version__


# ------------------------------------------------------------------------------------------------ shared steps


def _progress() -> bool:
    """Progress bars only on a terminal (never drawn into logs)."""
    return sys.stderr.isatty()


def _check_runtime(args: argparse.Namespace):
    """The device, and a refusal of impossible --backend / --precision pairs, before any work."""
    from dsclora.devices import resolve_device
    from dsclora.runtime.backends import check_combination

    device = resolve_device(args.device)
    check_combination(args.backend, device, args.precision)
    return device


def _upscaler(args: argparse.Namespace, loaded, device, sizes: list[tuple[int, int]]):
    """The loaded model as a ``TiledUpscaler``: back-end resolved (``auto`` in autotune), tile chosen, both printed."""
    from dsclora.models.ensemble import SelfEnsemble
    from dsclora.runtime.autotune import resolve_backend
    from dsclora.runtime.backends import make_runner
    from dsclora.runtime.tiling import TiledUpscaler
    from dsclora.runtime.upscale import auto_tile

    overlap = loaded.receptive_radius if args.tile_overlap is None else args.tile_overlap
    if loaded.spec is None:  # bicubic runs as it is
        return TiledUpscaler(loaded.module, loaded.scale, args.tile or 0, overlap)
    tile = args.tile
    if tile is None:
        budget = args.memory_budget * 2**20
        tile = auto_tile(sizes, loaded.spec.span.channels, loaded.scale, overlap, budget)
        if tile:
            print(f"tile: {tile} (auto: a whole image would need more than {args.memory_budget} MiB)", file=sys.stderr)
    upscaler = TiledUpscaler(loaded.module, loaded.scale, tile, overlap)
    shapes = upscaler.forward_shapes(sizes)
    shapes = {shape: n * args.self_ensemble for shape, n in shapes.items()}
    choice = resolve_backend(loaded.span, args.backend, device, args.precision, shapes)
    runner = make_runner(loaded.span, choice.backend, device, args.precision, choice.pad)
    upscaler.runner = SelfEnsemble(runner, args.self_ensemble) if args.self_ensemble > 1 else runner
    note = f" ({args.backend}: {choice.why})" if args.backend == "auto" else ""
    ensemble = ", x8 self-ensemble" if args.self_ensemble > 1 else ""
    print(f"backend: {choice.label}, precision {args.precision}{ensemble}{note}", file=sys.stderr)
    return upscaler


# ------------------------------------------------------------------------------------------------ commands


def _cmd_upscale(args: argparse.Namespace) -> int:
    from dsclora.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_size
    from dsclora.fs import check_output_folder
    from dsclora.runtime import upscale
    from dsclora.weights.load import load

    ext = "." + args.ext.lower().lstrip(".")
    if ext not in IMAGE_SUFFIXES:
        raise DscloraError(f"--ext {args.ext}: unsupported output format (use one of {', '.join(IMAGE_SUFFIXES)})")
    device = _check_runtime(args)
    outdir = check_output_folder(args.output, "-o")
    existing = "overwrite" if args.overwrite else "skip" if args.skip_existing else "refuse"
    plan = upscale.plan(args.inputs, outdir, ext, args.suffix, args.recursive, existing)
    if plan.ignored_in_subfolders:
        print(
            f"note: {plan.ignored_in_subfolders} image(s) in sub-folders not taken (add --recursive)", file=sys.stderr
        )
    for dst in plan.skipped_existing:
        print(f"skipped (exists): {dst}", file=sys.stderr)
    if not plan.jobs:
        print("nothing to do: every output exists")
        return 0
    loaded = load(args.weights, device, args.scale)
    sizes = [s for s in (image_size(src) for src, _ in plan.jobs) if s]
    upscaler = _upscaler(args, loaded, device, sizes)
    failures = upscale.run(plan.jobs, upscaler, device, args.max_pixels or DEFAULT_MAX_PIXELS, _progress())
    done = len(plan.jobs) - failures
    if done:
        print(f"wrote {done} image(s) to {outdir} (x{loaded.scale})")
    return EXIT_FAILED if failures else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dsclora.data.benchmark import find_pairs
    from dsclora.fs import atomic_write, check_output_file
    from dsclora.measure.evaluate import evaluate_dataset
    from dsclora.weights.load import load

    for root in args.data:
        if not Path(root).is_dir():
            raise DscloraError(f"--data {root}: folder not found")
    if args.json:
        check_output_file(args.json, "--json")
    device = _check_runtime(args)
    loaded = load(args.weights, device, args.scale)
    for root in args.data:  # every folder's layout checked before the first image is computed
        find_pairs(root, loaded.scale)
    upscaler = _upscaler(args, loaded, device, [])
    results = [evaluate_dataset(upscaler, root, loaded.scale, device, _progress()) for root in args.data]
    print(f"weights: {loaded.label}   scale: x{loaded.scale}   (Y: BT.601, border {loaded.scale}; RGB PSNR as NTIRE)")
    print(f"{'dataset':<16}{'images':>7}{'PSNR-Y':>9}{'SSIM-Y':>9}{'PSNR-RGB':>10}")
    for r in results:
        print(f"{r['dataset']:<16}{r['images']:>7}{r['psnr_y']:>9.3f}{r['ssim_y']:>9.4f}{r['psnr_rgb']:>10.3f}")
    if args.json:
        payload = {"weights": loaded.label, "scale": loaded.scale, "precision": args.precision, "datasets": results}
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from dsclora.fs import atomic_write, check_output_file
    from dsclora.measure.profiling import ntire_report, profile
    from dsclora.runtime.autotune import resolve_backend
    from dsclora.runtime.backends import make_runner
    from dsclora.weights.load import load

    if args.ntire and not args.data:
        raise DscloraError("--ntire needs --data: the validation set whose PSNR and runtime it reports")
    if args.data and not Path(args.data).is_dir():
        raise DscloraError(f"--data {args.data}: folder not found")
    if args.json:
        check_output_file(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _check_runtime(args)
    loaded = load(args.weights, device, network=True)
    span = loaded.span
    h, w = args.size
    choice = resolve_backend(span, args.backend, device, args.precision, {(h, w): args.warmup + args.runs})
    runner = make_runner(span, choice.backend, device, args.precision, choice.pad)
    print(f"backend: {choice.label}, precision {args.precision}", file=sys.stderr)
    figures = {"weights": loaded.label, "scale": loaded.scale, "backend": choice.label, "precision": args.precision}
    figures |= profile(span, runner, (1, span.config.in_channels, h, w), args.runs, args.warmup)
    print(f"model        {loaded.label} (SPAN C={span.config.channels}, {span.config.blocks} blocks, x{loaded.scale})")
    print(f"input        1x{span.config.in_channels}x{h}x{w}")
    print(f"params       {figures['params']:,}")
    print(f"FLOPs (MACs) {figures['flops_macs'] / 1e9:.3f} G")
    print(f"activations  {figures['activations'] / 1e6:.2f} M")
    print(f"convs        {figures['convs']}")
    print(
        f"latency      median {figures['latency_ms_median']:.2f} ms, min {figures['latency_ms_min']:.2f} ms "
        f"({figures['runs']} runs, {figures['device']}, {figures['threads']} threads)"
    )
    print(
        f"peak memory  {figures['peak_memory_bytes'] / 2**20:.1f} MiB ({figures['memory_kind']}), "
        f"{figures['peak_memory_over_start_bytes'] / 2**20:.1f} MiB over the start of the timed runs"
    )
    if args.ntire:
        report = ntire_report(span, runner, args.data, loaded.scale, device, args.efdn_ms, _progress())
        figures["ntire"] = report
        score = f"{report['score']:.4f}" if report["score"] is not None else "n/a (give --efdn-ms)"
        print(
            f"NTIRE kit    {report['images']} images: RGB PSNR {report['psnr_rgb']:.3f} dB, runtime "
            f"{report['runtime_ms']:.2f} ms ({report['runtime_kind']}), max memory {report['max_memory_mib']:.1f} MiB; "
            f"score vs EFDN {score}"
        )
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(figures, indent=2))
    return 0


def _convert(source: str, output: str, form: str, file_format: str | None, prefer_ema: bool = True) -> int:
    """The one deploy/train conversion behind ``convert`` and ``merge``."""
    from dsclora.fs import check_output_file
    from dsclora.models.forms import convert
    from dsclora.weights.checkpoints import file_format_of, load_model, save_model
    from dsclora.weights.registry import resolve

    file_format = file_format_of(output, file_format)
    path = resolve(source)
    check_output_file(output)
    if Path(output).resolve() == path.resolve():
        raise DscloraError(f"{output} is the input; write the result to another file")
    model, _ = load_model(path, prefer_ema=prefer_ema)
    converted, diff = convert(model, form)
    written = save_model(converted, output, file_format=file_format)
    print(
        f"wrote {output}: {written.arch} {written.form} form, C={written.span.channels}, x{written.span.scale} "
        f"(max abs difference to the input {diff:.1e})"
    )
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    return _convert(args.input, args.output, args.to, args.format)


def _cmd_merge(args: argparse.Namespace) -> int:
    from dsclora.weights.checkpoints import read_train_state

    read_train_state(args.checkpoint)  # refuses anything but a training checkpoint
    return _convert(args.checkpoint, args.output, "deploy", None, prefer_ema=not args.no_ema)


def _cmd_train(args: argparse.Namespace) -> int:
    from dsclora.train.config import describe, load_config

    config = load_config(args.config, args.overrides, check=not args.print_config)
    if args.print_config:
        print(describe(config), end="")
        return 0
    from dsclora.train.loop import Trainer

    summary = Trainer(config, resume=args.resume, quiet=args.quiet).run()
    if "final_model" in summary and not args.quiet:
        print(f"wrote {summary['final_model']} (merge max abs diff {summary['merge_max_abs_diff']:.1e})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dsclora.demo import run_demo, sample_photos
    from dsclora.devices import resolve_device
    from dsclora.fs import check_output_folder
    from dsclora.weights.load import load

    outdir = check_output_folder(args.output, "-o")
    photos = sample_photos()
    device = resolve_device(args.device)
    run_demo(load(args.weights, device, args.scale), photos, outdir, device)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dsclora.data.images import check_image
    from dsclora.export.card import write_card
    from dsclora.fs import check_output_file, check_output_folder
    from dsclora.weights.checkpoints import file_format_of, save_model
    from dsclora.weights.load import load

    fmt = args.format
    onnx_only = {"--precision": args.precision != "fp32", "--io": args.io != "fp32", "--static": args.static}
    for flag, used in onnx_only.items():
        if used and fmt != "onnx":
            raise DscloraError(f"{flag} applies to --format onnx only")
    if fmt == "ntire":
        if args.team is None or not args.name:
            raise DscloraError("--format ntire needs --team N and --name X (files teamNN_X.py / .pth)")
        from dsclora.export.ntire import ntire_stem

        ntire_stem(args.team, args.name)
        check_output_folder(args.output, "-o")
    else:
        check_output_file(args.output, "-o")
    if fmt in ("spandrel", "safetensors"):
        file_format_of(args.output, "safetensors" if fmt == "safetensors" else None)
    if fmt == "onnx" and Path(args.output).suffix.lower() != ".onnx":
        raise DscloraError(f"-o {args.output}: an ONNX file should end in .onnx")
    probe = check_image(args.check_image)
    loaded = load(args.weights, network=True)
    span = loaded.span
    if fmt == "onnx":
        from dsclora.export.onnx import OnnxOptions, export_onnx

        options = OnnxOptions(args.opset, args.precision, args.io, args.static, simplify=not args.no_simplify)
        metadata = {"scale": loaded.scale, "architecture": "span", "channels": span.config.channels}
        metadata |= {"source": loaded.label, "exported_by": f"dsclora {_version()}"}
        diff = export_onnx(span, args.output, probe, options, metadata)
        files = [Path(args.output)]
        shape = "static {}x{}".format(*args.static) if args.static else "dynamic batch/height/width"
        what = (
            f"ONNX opset {args.opset}, {args.precision} ({args.io} in/out), {shape}; ONNX Runtime vs torch {diff:.1e}"
        )
    elif fmt == "ncnn":
        from dsclora.export.ncnn import export_ncnn

        param, weights, diff = export_ncnn(span, args.output, probe)
        files, what = [param, weights], f"NCNN param/bin; ncnn vs torch max abs diff {diff:.1e}"
    elif fmt == "ntire":
        from dsclora.export.ntire import export_ntire

        files = list(export_ntire(span, args.output, args.team, args.name))
        what = "NTIRE kit module and weights"
    elif fmt == "spandrel":
        from dsclora.export.spandrel import export_spandrel

        diff = export_spandrel(span, args.output)
        files, what = [Path(args.output)], f"training-form SPAN for spandrel/chaiNNer; re-collapse diff {diff:.1e}"
    else:
        save_model(span, args.output, form="deploy", file_format="safetensors")
        files, what = [Path(args.output)], "deploy-form SPAN with its JSON config"
    if not args.no_card:
        card = files[0].with_suffix(".json")
        write_card(loaded, files, card)
        files.append(card)
    print(f"wrote {', '.join(str(f) for f in files)}: {what}")
    return 0


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from dsclora.weights.registry import DEFAULT, REGISTRY, embedded_weights, resolve, search_path

    print(f"{DEFAULT:<11} {embedded_weights()}\n{'':<11} this project's own x4 model (used when --weights is omitted)")
    for name, entry in REGISTRY.items():
        try:
            where = str(resolve(name))
        except DscloraError:
            where = "(not found)"
        print(f"{name:<11} {entry.filename:<42} {where}\n{'':<11} {entry.description}; licence: {entry.license}")
    print("search path: " + os.pathsep.join(str(p) for p in search_path()))
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from dsclora.weights.registry import download

    print(download(args.name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed as one line
        return int(stop.code or 0)
    try:
        return int(args.func(args) or 0)
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
        if os.environ.get("DSCLORA_DEBUG"):
            raise
        print(
            f"dsclora: internal error: {type(exc).__name__}: {exc} (DSCLORA_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
