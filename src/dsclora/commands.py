"""What each ``dsclora`` command does once its arguments are parsed: checks before work, then one call into
the package per stage. Every function takes the parsed ``argparse.Namespace`` and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dsclora.errors import DscloraError
from dsclora.version import __version__

EXIT_FAILED = 1


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


DEFAULT_OVERLAP = 32  # LR pixels of context per tile when a network's receptive radius is unbounded


def _tile_overlap(args: argparse.Namespace, loaded) -> int:
    """--tile-overlap, else the network's receptive radius (known, or measured and said), else a default that
    is said not to be exact."""
    from dsclora.models.receptive import measure_receptive_radius

    if args.tile_overlap is not None:
        return args.tile_overlap
    if loaded.receptive_radius is not None:
        return loaded.receptive_radius
    radius = measure_receptive_radius(loaded.runnable(), loaded.in_channels)
    if radius is None:
        print(
            f"tile overlap: {DEFAULT_OVERLAP} (default): {loaded.arch} sees beyond any tile (global pooling or "
            "attention), so tiled output is close to, not equal to, untiled output",
            file=sys.stderr,
        )
        return DEFAULT_OVERLAP
    loaded.receptive_radius = radius
    print(f"tile overlap: {radius} (the receptive radius measured for {loaded.arch}: tiles are exact)", file=sys.stderr)
    return radius


def _runner(args: argparse.Namespace, loaded, device, shapes: dict, extra: str = ""):
    """(runner, resolved choice): ``auto`` back-end / precision resolved in autotune, the result printed."""
    from dsclora.runtime.autotune import resolve
    from dsclora.runtime.backends import make_runner

    choice = resolve(loaded, args.backend, device, args.precision, shapes)
    runner = make_runner(loaded, choice.backend, device, choice.precision, choice.pad)
    asked = [f"{name} auto" for name in ("backend", "precision") if getattr(args, name) == "auto"]
    note = f" ({', '.join(asked)}: {choice.why})" if asked else ""
    print(f"backend: {choice.label}, precision {choice.precision}{extra}{note}", file=sys.stderr)
    return runner, choice


def _upscaler(args: argparse.Namespace, loaded, device, sizes: list[tuple[int, int]]):
    """(the loaded model as a ``TiledUpscaler``, the precision it computes in): back-end and precision resolved
    (``auto`` in autotune), tile chosen, all printed."""
    from dsclora.measure.profiling import conv_statistics
    from dsclora.models.ensemble import SelfEnsemble
    from dsclora.runtime.tiling import TiledUpscaler
    from dsclora.runtime.upscale import auto_tile
    from dsclora.weights.load import BICUBIC

    if loaded.arch == BICUBIC:  # runs as it is
        overlap = args.tile_overlap or loaded.receptive_radius
        return TiledUpscaler(loaded.module, loaded.scale, args.tile or 0, overlap), "fp32"
    tile = args.tile or 0
    if args.tile is None and sizes:  # auto: from the network's activations per pixel, measured on a small probe
        probe = 64 // loaded.size_multiple * loaded.size_multiple or loaded.size_multiple
        per_pixel = conv_statistics(loaded.runnable(), (1, loaded.in_channels, probe, probe))["activations"] / probe**2
        budget = args.memory_budget * 2**20
        overlap = args.tile_overlap or loaded.receptive_radius or DEFAULT_OVERLAP
        tile = auto_tile(sizes, per_pixel, loaded.scale, overlap, budget)
        if tile:
            print(f"tile: {tile} (auto: a whole image would need more than {args.memory_budget} MiB)", file=sys.stderr)
    overlap = _tile_overlap(args, loaded) if tile else 0
    upscaler = TiledUpscaler(loaded.module, loaded.scale, tile, overlap)
    shapes = upscaler.forward_shapes(sizes)
    shapes = {shape: n * args.self_ensemble for shape, n in shapes.items()}
    ensemble = ", x8 self-ensemble" if args.self_ensemble > 1 else ""
    runner, choice = _runner(args, loaded, device, shapes, ensemble)
    upscaler.runner = SelfEnsemble(runner, args.self_ensemble) if args.self_ensemble > 1 else runner
    return upscaler, choice.precision


# ------------------------------------------------------------------------------------------------ commands


def upscale(args: argparse.Namespace) -> int:
    from dsclora.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_size
    from dsclora.fs import check_output_folder
    from dsclora.runtime import upscale as pipeline
    from dsclora.weights.load import load

    ext = "." + args.ext.lower().lstrip(".")
    if ext not in IMAGE_SUFFIXES:
        raise DscloraError(f"--ext {args.ext}: unsupported output format (use one of {', '.join(IMAGE_SUFFIXES)})")
    device = _check_runtime(args)
    outdir = check_output_folder(args.output, "-o")
    existing = "overwrite" if args.overwrite else "skip" if args.skip_existing else "refuse"
    plan = pipeline.plan(args.inputs, outdir, ext, args.suffix, args.recursive, existing)
    if plan.ignored_in_subfolders:
        print(
            f"note: {plan.ignored_in_subfolders} image(s) in sub-folders not taken (add --recursive)", file=sys.stderr
        )
    for dst in plan.skipped_existing:
        print(f"skipped (exists): {dst}", file=sys.stderr)
    if not plan.jobs:
        print("nothing to do: every output exists")
        return 0
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    sizes = [image_size(src, max_pixels) for src, _ in plan.jobs]  # every input's header, before the model
    loaded = load(args.weights, device, args.scale)
    upscaler, _ = _upscaler(args, loaded, device, sizes)
    failures = pipeline.run(plan.jobs, upscaler, device, max_pixels, _progress())
    done = len(plan.jobs) - failures
    if done:
        print(f"wrote {done} image(s) to {outdir} (x{loaded.scale})")
    return EXIT_FAILED if failures else 0


def evaluate(args: argparse.Namespace) -> int:
    from dsclora.data.benchmark import find_pairs
    from dsclora.fs import atomic_write, check_output_file
    from dsclora.measure.evaluate import evaluate_dataset
    from dsclora.weights.load import load

    for root in args.data:
        if not Path(root).is_dir():
            raise DscloraError(f"--data {root}: folder not found")
    if args.json:
        check_output_file(args.json, "--json")
        _refuse_overwriting_inputs("eval", [Path(args.json)], args.weights)
    device = _check_runtime(args)
    loaded = load(args.weights, device, args.scale)
    for root in args.data:  # every folder's layout checked before the first image is computed
        find_pairs(root, loaded.scale)
    upscaler, precision = _upscaler(args, loaded, device, [])
    results = [evaluate_dataset(upscaler, root, loaded.scale, device, _progress()) for root in args.data]
    print(f"weights: {loaded.label}   scale: x{loaded.scale}   (Y: BT.601, border {loaded.scale}; RGB PSNR as NTIRE)")
    print(f"{'dataset':<16}{'images':>7}{'PSNR-Y':>9}{'SSIM-Y':>9}{'PSNR-RGB':>10}")
    for r in results:
        print(f"{r['dataset']:<16}{r['images']:>7}{r['psnr_y']:>9.3f}{r['ssim_y']:>9.4f}{r['psnr_rgb']:>10.3f}")
    if args.json:
        payload = {"weights": loaded.label, "scale": loaded.scale, "precision": precision}
        payload |= {"self_ensemble": args.self_ensemble, "datasets": results}
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))
    return 0


def profile(args: argparse.Namespace) -> int:
    import torch

    from dsclora.fs import atomic_write, check_output_file
    from dsclora.measure.profiling import ntire_report, profile
    from dsclora.weights.load import load

    if args.ntire and not args.data:
        raise DscloraError("--ntire needs --data: the validation set whose PSNR and runtime it reports")
    if args.data and not Path(args.data).is_dir():
        raise DscloraError(f"--data {args.data}: folder not found")
    if args.json:
        check_output_file(args.json, "--json")
        _refuse_overwriting_inputs("profile", [Path(args.json)], args.weights)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _check_runtime(args)
    loaded = load(args.weights, device, network=True)
    h, w = args.size
    runner, choice = _runner(args, loaded, device, {(h, w): args.warmup + args.runs})
    figures = {"weights": loaded.label, "architecture": loaded.arch, "scale": loaded.scale}
    figures |= {"backend": choice.label, "precision": choice.precision}
    figures |= profile(loaded.runnable(), runner, (1, loaded.in_channels, h, w), args.runs, args.warmup)
    size = f" {' '.join(loaded.hooks.size_tags)}" if loaded.hooks.size_tags else ""
    print(f"model        {loaded.label} ({loaded.arch}{size}, x{loaded.scale})")
    print(f"input        1x{loaded.in_channels}x{h}x{w}")
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
        report = ntire_report(loaded.runnable(), runner, args.data, loaded.scale, device, args.efdn_ms, _progress())
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
    """The one checked conversion behind ``convert`` and ``merge``: merged (or SPAN's training form) in the
    source architecture's own format."""
    from dsclora.fs import check_output_file
    from dsclora.models.checks import check_same_function, checked_merge
    from dsclora.weights.checkpoints import file_format_of
    from dsclora.weights.load import load, network_file

    file_format_of(output, file_format)
    path = network_file(source)
    check_output_file(output)
    if Path(output).resolve() == path.resolve():
        raise DscloraError(f"{output} is the input; write the result to another file")
    loaded = load(source, prefer_ema=prefer_ema, merged=False)
    merged, diff = checked_merge(loaded.module, loaded.runnable)
    if form == "train":
        if loaded.hooks.train_form is None:
            raise DscloraError(f"--to train: {loaded.arch} has no re-parameterisable training form")
        diff = check_same_function(
            loaded.runnable(merged), loaded.runnable(loaded.hooks.train_form(merged)), "training form"
        )
    files = loaded.saver(merged, Path(output), train_form=form == "train")
    print(
        f"wrote {', '.join(map(str, files))}: {loaded.arch} {form} form, x{loaded.scale} "
        f"(max abs difference to the input {diff:.1e})"
    )
    return 0


def convert(args: argparse.Namespace) -> int:
    return _convert(args.input, args.output, args.to, args.format)


def merge(args: argparse.Namespace) -> int:
    from dsclora.weights.checkpoints import read_train_state

    read_train_state(args.checkpoint)  # refuses anything but a training checkpoint
    return _convert(args.checkpoint, args.output, "deploy", None, prefer_ema=not args.no_ema)


def train(args: argparse.Namespace) -> int:
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


def demo(args: argparse.Namespace) -> int:
    from dsclora.demo import run_demo, sample_photos
    from dsclora.devices import resolve_device
    from dsclora.fs import check_output_folder
    from dsclora.weights.load import load

    outdir = check_output_folder(args.output, "-o")
    photos = sample_photos()
    device = resolve_device(args.device)
    run_demo(load(args.weights, device, args.scale), photos, outdir, device)
    return 0


def _export_files(args: argparse.Namespace) -> list[Path]:
    """Every file an export will write, the JSON card last."""
    if args.format == "ntire":
        from dsclora.export.ntire import ntire_stem

        stem = Path(args.output) / ntire_stem(args.team, args.name)
        files = [stem.with_suffix(".py"), stem.with_suffix(".pth")]
    elif args.format == "ncnn":
        from dsclora.export.ncnn import ncnn_paths

        files = list(ncnn_paths(args.output))
    else:
        files = [Path(args.output)]
    return files if args.no_card else [*files, files[0].with_suffix(".json")]


def _refuse_overwriting_inputs(command: str, outputs: list[Path], weights: str | None, others: tuple = ()) -> None:
    """A command never writes over what it reads: the weights, their JSON card (``X.json`` beside ``X.pth``),
    and any ``others`` (export's check image). Asked before anything is loaded."""
    from dsclora.weights.load import BICUBIC, network_file

    inputs = {Path(p).resolve() for p in others}
    if weights != BICUBIC:
        path = network_file(weights)
        inputs |= {path.resolve(), path.with_suffix(".json").resolve()}
    for path in outputs:
        if Path(path).resolve() in inputs:
            raise DscloraError(f"{path} is one of {command}'s inputs; write it elsewhere")


def export(args: argparse.Namespace) -> int:
    from dsclora.data.images import check_image
    from dsclora.export.card import write_card
    from dsclora.fs import check_output_file, check_output_folder
    from dsclora.weights.checkpoints import file_format_of
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
    _refuse_overwriting_inputs(
        "export", _export_files(args), args.weights, (args.check_image,) if args.check_image else ()
    )
    probe = check_image(args.check_image)
    loaded = load(args.weights, network=True)
    if fmt == "onnx":
        from dsclora.export.onnx import OnnxOptions, export_onnx

        options = OnnxOptions(args.opset, args.precision, args.io, args.static, simplify=not args.no_simplify)
        metadata = {"scale": loaded.scale, "architecture": loaded.arch, "source": loaded.label}
        metadata |= {"exported_by": f"dsclora {__version__}"}
        diff = export_onnx(loaded, args.output, probe, options, metadata)
        files = [Path(args.output)]
        shape = "static {}x{}".format(*args.static) if args.static else "dynamic batch/height/width"
        what = (
            f"ONNX opset {args.opset}, {args.precision} ({args.io} in/out), {shape}; ONNX Runtime vs torch {diff:.1e}"
        )
    elif fmt == "ncnn":
        from dsclora.export.ncnn import export_ncnn

        param, weights, diff = export_ncnn(loaded, args.output, probe)
        files, what = [param, weights], f"NCNN param/bin; ncnn vs torch max abs diff {diff:.1e}"
    elif fmt == "ntire":
        from dsclora.export.ntire import export_ntire

        module, weights, diff = export_ntire(loaded, args.output, args.team, args.name)
        files, what = [module, weights], f"NTIRE kit module and weights, run in a clean Python: max abs diff {diff:.1e}"
    elif fmt == "spandrel":
        from dsclora.export.spandrel import export_spandrel

        diff = export_spandrel(loaded, args.output)
        files, what = [Path(args.output)], f"training-form SPAN for spandrel/chaiNNer; re-collapse diff {diff:.1e}"
    else:
        files = loaded.saver(loaded.module, Path(args.output))
        what = f"{loaded.arch} in its own layout (safetensors)"
    if not args.no_card:
        card = _export_files(args)[-1]
        write_card(loaded, files, card)
        files.append(card)
    print(f"wrote {', '.join(str(f) for f in files)}: {what}")
    return 0


def weights_list(args: argparse.Namespace) -> int:
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


def weights_download(args: argparse.Namespace) -> int:
    from dsclora.weights.registry import download

    print(download(args.name))
    return 0
