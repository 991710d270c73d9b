"""The ``dsclora`` command line: upscale, eval, profile, convert, weights.

Every user-facing problem (a missing file, a broken image, an unknown checkpoint) ends as one line on stderr
and a non-zero exit; outputs are written atomically, so a failure never leaves a partial file.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dsclora.errors import DscloraError

EXIT_USAGE = 2
EXIT_FAILED = 1


def _add_runtime_options(parser: argparse.ArgumentParser, tiling: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps, or auto (cuda if available; default)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "channels_last", "compile", "onnxruntime"],
        help="how the network runs: auto (the fastest exact fp32 path, measured once per machine and printed; "
        "compile when the job is big enough to repay compiling, e.g. a folder upscaled with --tile), "
        "torch (eager NCHW reference), channels_last, compile (torch.compile), onnxruntime",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "bf16-accurate", "fp16"],
        help="fp32 (exact; default); bf16 (fastest on CPUs with bf16, ~0.01 dB lower); bf16-accurate (bf16 convs, "
        "fp32 elsewhere: within 0.005 dB); fp16 (GPU)",
    )
    if tiling:
        parser.add_argument(
            "--tile", type=int, default=0, help="process the LR image in tiles of N x N pixels (0 = whole image)"
        )
        parser.add_argument(
            "--tile-overlap",
            type=int,
            default=None,
            help="LR pixels of context around each tile; the default, the model's receptive radius, "
            "makes tiled output equal untiled",
        )


def _weights_help(extra: str = "") -> str:
    return (
        "a checkpoint file (.pth/.safetensors) or a registry name (dscf, span-tiny, span-ch28; "
        f"see `dsclora weights list`){extra}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsclora",
        description="Train, merge, evaluate and deploy SPAN / DSCLoRA super-resolution models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("upscale", help="super-resolve images, folders or globs", description="Super-resolve images.")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (their images) or glob patterns")
    up.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created)")
    up.add_argument("--weights", default=None, help=_weights_help("; default: the embedded model"))
    up.add_argument("--ext", default="png", help="output format by file suffix: png (default), jpg, webp, tif, bmp")
    up.add_argument("--max-pixels", type=int, default=None, help="refuse inputs larger than this (default 16384²)")
    _add_runtime_options(up)
    up.set_defaults(func=_cmd_upscale)

    ev = sub.add_parser("eval", help="PSNR / SSIM on benchmark folders", description="Evaluate on benchmark sets.")
    ev.add_argument("--weights", required=True, help=_weights_help(", or `bicubic` for the classic baseline"))
    ev.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="DIR",
        help="benchmark folder (repeatable): <DIR>/x<S>/{HR,LR}, <DIR>/HR + <DIR>/LR_bicubic/X<S>, "
        "<DIR>/HR + <DIR>/LR, or HR images only (LR made with MATLAB bicubic and cached)",
    )
    ev.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    ev.add_argument("--json", default=None, metavar="FILE", help="also write means and per-image rows as JSON")
    _add_runtime_options(ev)
    ev.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("profile", help="params, FLOPs, activations, convs, latency, memory")
    pr.add_argument("--weights", default=None, help=_weights_help("; default: the embedded model"))
    pr.add_argument("--size", default="256x256", help="input HxW in LR pixels (default 256x256, as NTIRE)")
    pr.add_argument("--runs", type=int, default=10, help="timed forward passes (default 10)")
    pr.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    pr.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    pr.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    _add_runtime_options(pr, tiling=False)
    pr.set_defaults(func=_cmd_profile)

    cv = sub.add_parser("convert", help="rewrite a checkpoint between forms and formats")
    cv.add_argument("input", metavar="IN", help="checkpoint to read (any supported layout)")
    cv.add_argument("output", metavar="OUT", help="file to write")
    cv.add_argument(
        "--to",
        default="deploy",
        choices=["deploy", "train"],
        help="deploy: one 3x3 conv per Conv3XC, LoRA merged (default); train: Conv3XC branches that "
        "collapse exactly to the same weights (BasicSR / spandrel layout)",
    )
    cv.add_argument(
        "--format", default=None, choices=["safetensors", "pth"], help="default: from OUT's suffix (.pth/.pt -> pth)"
    )
    cv.set_defaults(func=_cmd_convert)

    tr = sub.add_parser(
        "train",
        help="train a DSCLoRA student or a SPAN from a YAML recipe",
        description="Train from a YAML recipe (see configs/). Under `torchrun --nproc_per_node=N` it runs DDP.",
    )
    tr.add_argument("config", metavar="CONFIG.yaml", help="recipe file, e.g. configs/dsclora_x4.yaml")
    tr.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides in YAML syntax, e.g. optim.lr=1e-4"
    )
    tr.add_argument("--resume", action="store_true", help="continue from <run.output>/latest.pt")
    tr.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    tr.set_defaults(func=_cmd_train)

    mg = sub.add_parser("merge", help="merge a training checkpoint into a plain deploy SPAN (safetensors)")
    mg.add_argument("checkpoint", metavar="TRAIN_CKPT", help="latest.pt or best.pt written by `dsclora train`")
    mg.add_argument("output", metavar="OUT", help="deploy model to write (.safetensors or .pth)")
    mg.add_argument("--no-ema", action="store_true", help="merge the raw weights instead of the EMA weights")
    mg.set_defaults(func=_cmd_merge)

    dm = sub.add_parser(
        "demo",
        help="upscale sample photos (from scikit-image) and compare with bicubic",
        description="Make x4 LR versions of sample photos, super-resolve them, report PSNR against bicubic.",
    )
    dm.add_argument(
        "-o", "--output", default="out/demo", metavar="OUTDIR", help="folder for the images (default out/demo)"
    )
    dm.add_argument("--weights", default=None, help=_weights_help("; default: the embedded model"))
    dm.add_argument("--device", default="auto", help="cpu, cuda, mps, or auto (default)")
    dm.set_defaults(func=_cmd_demo)

    ex = sub.add_parser(
        "export",
        help="write ONNX, a spandrel/chaiNNer-compatible SPAN, or safetensors",
        description="Export a model for other tools; each export is checked before it is written.",
    )
    ex.add_argument("--weights", default=None, help=_weights_help("; default: the embedded model"))
    ex.add_argument(
        "--format",
        required=True,
        choices=["onnx", "spandrel", "safetensors"],
        help="onnx: dynamic batch/height/width, checked in ONNX Runtime (<= 1e-4 on a real image); "
        "spandrel: training-form SPAN (.pth or .safetensors) that collapses exactly to our weights; "
        "safetensors: our deploy format with its JSON config",
    )
    ex.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument(
        "--check-image", default=None, metavar="PATH", help="image for the ONNX check (default: a sample photo)"
    )
    ex.set_defaults(func=_cmd_export)

    wt = sub.add_parser("weights", help="list, locate or download the named official checkpoints")
    wt_sub = wt.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    wt_sub.add_parser("list", help="registry names, files, where they are found").set_defaults(func=_cmd_weights_list)
    dl = wt_sub.add_parser("download", help="fetch by URL into the cache, verifying sha256")
    dl.add_argument("name", help="registry name")
    dl.set_defaults(func=_cmd_weights_download)
    return parser


def _version() -> str:
    from dsclora import __version__

    return __version__


# ------------------------------------------------------------------------------------------------ upscale


def _runner(model, spec, args: argparse.Namespace, device, shapes=None) -> tuple:
    """(callable running the network per --backend / --precision, resolved backend); bicubic runs as it is.

    ``shapes`` (LR input shape -> forwards) describes the job, so ``auto`` can weigh compiling against it.
    """
    from dsclora.autotune import choose
    from dsclora.backends import make_runner

    if spec is None:
        return model, "bicubic"
    backend, note = args.backend, ""
    if backend == "auto" and args.precision == "fp32":
        backend, why = choose(model, device, shapes)
        note = f" (auto: {why})"
    runner, backend = make_runner(model, backend, device, args.precision)
    print(f"backend: {backend}, precision {args.precision}{note}", file=sys.stderr)
    return runner, backend


def _overlap(args: argparse.Namespace, spec) -> int:
    """--tile-overlap, defaulting to the network's receptive radius (tiled == untiled); bicubic needs none."""
    if args.tile_overlap is not None:
        return args.tile_overlap
    return spec.span.receptive_radius if spec else 0


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders as their images, anything else as a glob pattern; duplicates dropped."""
    from dsclora.data.io import list_images

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DscloraError(f"no images in folder {path}")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            if not matches:
                raise DscloraError(f"no such file: {item}")
            files.extend(matches)
    return list(dict.fromkeys(files))


def _cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dsclora.data.io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_size, read_image, write_image
    from dsclora.inference import forward_shapes, resolve_device, upscale_image
    from dsclora.loading import load_for_inference

    ext = "." + args.ext.lower().lstrip(".")
    if ext not in IMAGE_SUFFIXES:
        raise DscloraError(f"--ext {args.ext}: unsupported output format")
    files = expand_inputs(args.inputs)
    outdir = Path(args.output)
    targets = [outdir / (f.stem + ext) for f in files]
    clashes = [t for t, n in Counter(targets).items() if n > 1]
    if clashes:
        raise DscloraError(f"several inputs would write {sorted(clashes)[0]}; rename them or use separate runs")
    device = resolve_device(args.device)
    model, scale, spec = load_for_inference(args.weights, device)
    overlap = _overlap(args, spec)
    shapes = None
    if args.backend == "auto" and spec is not None:
        shapes = forward_shapes([s for s in map(image_size, files) if s], args.tile, overlap)
    runner, _ = _runner(model, spec, args, device, shapes)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    failures = 0

    # Decoding the next image and encoding the previous result run in threads while the network computes
    # (Pillow and zlib release the GIL), so a folder is bound by the model, not by PNG I/O.
    def finish(write: Future) -> int:
        try:
            write.result()
            return 0
        except DscloraError as exc:
            print(f"dsclora: error: {exc}", file=sys.stderr)
            return 1

    with ThreadPoolExecutor(max_workers=2) as io_pool:
        pending_read = io_pool.submit(read_image, files[0], max_pixels)
        writes: deque[Future] = deque()
        for i, dst in enumerate(tqdm(targets, desc="upscale", unit="img", disable=len(files) < 2)):
            current = pending_read
            if i + 1 < len(files):
                pending_read = io_pool.submit(read_image, files[i + 1], max_pixels)
            try:
                result = upscale_image(runner, current.result(), scale, device, args.tile, overlap)
            except DscloraError as exc:
                failures += 1
                print(f"dsclora: error: {exc}", file=sys.stderr)
                continue
            writes.append(io_pool.submit(write_image, dst, result))
            if len(writes) > 2:  # bounded: at most two results wait for the encoder
                failures += finish(writes.popleft())
        failures += sum(finish(w) for w in writes)
    done = len(files) - failures
    if done:
        print(f"wrote {done} image(s) to {outdir} (x{scale})")
    return EXIT_FAILED if failures else 0


# ------------------------------------------------------------------------------------------------ eval


def _cmd_eval(args: argparse.Namespace) -> int:
    from dsclora.evaluate import evaluate_dataset
    from dsclora.inference import resolve_device
    from dsclora.loading import load_for_inference
    from dsclora.utils import atomic_write

    device = resolve_device(args.device)
    model, scale, spec = load_for_inference(args.weights, device, args.scale)
    runner, _ = _runner(model, spec, args, device)
    overlap = _overlap(args, spec)
    results = [
        evaluate_dataset(runner, root, scale, device, args.tile, overlap, progress=sys.stderr.isatty())
        for root in args.data
    ]
    print(f"weights: {args.weights}   scale: x{scale}   (Y: BT.601, border {scale}; RGB PSNR as the NTIRE kit)")
    print(f"{'dataset':<16}{'images':>7}{'PSNR-Y':>9}{'SSIM-Y':>9}{'PSNR-RGB':>10}")
    for r in results:
        print(f"{r['dataset']:<16}{r['images']:>7}{r['psnr_y']:>9.3f}{r['ssim_y']:>9.4f}{r['psnr_rgb']:>10.3f}")
    if args.json:
        payload = {"weights": args.weights, "scale": scale, "precision": args.precision, "datasets": results}
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ profile


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DscloraError(f"--size {text!r}: expected HxW, e.g. 256x256") from None
    if h < 1 or w < 1:
        raise DscloraError(f"--size {text!r}: sizes must be positive")
    return h, w


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from dsclora.inference import resolve_device
    from dsclora.loading import load_for_inference
    from dsclora.profiling import profile
    from dsclora.utils import atomic_write

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runs < 1 or args.warmup < 0:
        raise DscloraError("--runs must be >= 1 and --warmup >= 0")
    h, w = _parse_size(args.size)
    device = resolve_device(args.device)
    model, scale, spec = load_for_inference(args.weights, device)
    if spec is None:
        raise DscloraError("profile needs a network, not bicubic")
    runner, backend = _runner(model, spec, args, device, {(h, w): args.warmup + args.runs})
    figures = profile(model, runner, (1, spec.span.in_channels, h, w), args.runs, args.warmup)
    figures = {
        "weights": args.weights or "default",
        "scale": scale,
        "backend": backend,
        "precision": args.precision,
        **figures,
    }
    print(f"model        {figures['weights']} (SPAN C={spec.span.channels}, {spec.span.blocks} blocks, x{scale})")
    print(f"input        1x{spec.span.in_channels}x{h}x{w}")
    print(f"params       {figures['params']:,}")
    print(f"FLOPs (MACs) {figures['flops_macs'] / 1e9:.3f} G")
    print(f"activations  {figures['activations'] / 1e6:.2f} M")
    print(f"convs        {figures['convs']}")
    print(
        f"latency      median {figures['latency_ms_median']:.2f} ms, min {figures['latency_ms_min']:.2f} ms "
        f"({figures['runs']} runs, {figures['device']}, {figures['threads']} threads, {figures['backend']}, "
        f"{figures['precision']})"
    )
    print(
        f"peak memory  {figures['peak_memory_bytes'] / 2**20:.1f} MiB ({figures['memory_kind']}), "
        f"{figures['peak_memory_over_start_bytes'] / 2**20:.1f} MiB over the start of the timed runs"
    )
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(figures, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ convert


def _cmd_convert(args: argparse.Namespace) -> int:
    from dsclora.checkpoints import load_model, save_model
    from dsclora.weights import resolve

    model, _spec = load_model(resolve(args.input))
    written = save_model(model, args.output, form=args.to, file_format=args.format)
    print(f"wrote {args.output}: {written.arch}, {written.form} form, C={written.span.channels}, x{written.span.scale}")
    return 0


# ------------------------------------------------------------------------------------------------ train


def _cmd_train(args: argparse.Namespace) -> int:
    from dsclora.train.config import load_config
    from dsclora.train.loop import Trainer

    config = load_config(args.config, args.overrides)
    summary = Trainer(config, resume=args.resume, quiet=args.quiet).run()
    if "final_model" in summary and not args.quiet:
        print(f"wrote {summary['final_model']} (merge max abs diff {summary['merge_max_abs_diff']:.1e})")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from dsclora.train.loop import merge_checkpoint

    spec, diff = merge_checkpoint(args.checkpoint, args.output, use_ema=not args.no_ema)
    print(f"wrote {args.output}: plain SPAN C={spec.span.channels} x{spec.span.scale} (merge max abs diff {diff:.1e})")
    return 0


# ------------------------------------------------------------------------------------------------ demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from dsclora.demo import run_demo
    from dsclora.inference import resolve_device
    from dsclora.loading import default_weights, load_for_inference

    device = resolve_device(args.device)
    label = args.weights or default_weights()
    model, scale, _ = load_for_inference(label, device)
    run_demo(model, scale, Path(args.output), device, label)
    return 0


# ------------------------------------------------------------------------------------------------ export


def _cmd_export(args: argparse.Namespace) -> int:
    from dsclora.checkpoints import load_model, save_model
    from dsclora.export import check_image, export_onnx, export_spandrel
    from dsclora.loading import default_weights
    from dsclora.weights import resolve

    model, _ = load_model(resolve(args.weights or default_weights()))
    if args.format == "onnx":
        diff = export_onnx(model, args.output, check_image(args.check_image), opset=args.opset)
        print(
            f"wrote {args.output}: ONNX opset {args.opset}, dynamic batch/height/width; "
            f"ONNX Runtime vs torch max abs diff {diff:.1e}"
        )
    elif args.format == "spandrel":
        diff = export_spandrel(model, args.output)
        print(f"wrote {args.output}: training-form SPAN for spandrel/chaiNNer; re-collapse max abs diff {diff:.1e}")
    else:
        written = save_model(model, args.output, form="deploy", file_format="safetensors")
        print(f"wrote {args.output}: {written.arch} deploy, C={written.span.channels}, x{written.span.scale}")
    return 0


# ------------------------------------------------------------------------------------------------ weights


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from dsclora.weights import REGISTRY, resolve, search_path

    print("search path: " + os.pathsep.join(str(p) for p in search_path()))
    for name, entry in REGISTRY.items():
        try:
            where = str(resolve(name))
        except DscloraError:
            where = "(not found)"
        print(f"{name:<11} {entry.filename:<42} {where}\n{'':<11} {entry.description}; licence: {entry.license}")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from dsclora.weights import download

    print(download(args.name))
    return 0


# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DscloraError as exc:
        print(f"dsclora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
