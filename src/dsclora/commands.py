"""What each ``dsclora`` command does once its arguments are parsed: checks before work, then one call into
the package per stage. Every function takes the parsed ``argparse.Namespace`` and returns the exit code.
"""

from __future__ import annotations

import argparse
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
    from dsclora.models.ensemble import SelfEnsemble
    from dsclora.runtime.tiling import TiledUpscaler
    from dsclora.runtime.upscale import auto_tile, forward_bytes_per_pixel
    from dsclora.weights.load import BICUBIC

    if loaded.arch == BICUBIC:  # runs as it is
        overlap = args.tile_overlap or loaded.receptive_radius
        return TiledUpscaler(loaded.module, loaded.scale, args.tile or 0, overlap), "fp32"
    tile = args.tile or 0
    if args.tile is None and sizes:
        budget = args.memory_budget * 2**20
        overlap = args.tile_overlap or loaded.receptive_radius or DEFAULT_OVERLAP
        tile = auto_tile(sizes, forward_bytes_per_pixel(loaded), overlap, budget)
        if tile:
            print(f"tile: {tile} (auto: a whole image would need more than {args.memory_budget} MiB)", file=sys.stderr)
    if args.tile_overlap is not None and not tile:
        print("note: --tile-overlap is unused: images are upscaled whole, without tiles", file=sys.stderr)
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
    from dsclora.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
    from dsclora.fs import check_output_folder
    from dsclora.runtime import upscale as pipeline
    from dsclora.runtime import video
    from dsclora.weights.load import input_files, load

    ext = "." + args.ext.lower().lstrip(".")
    if ext not in IMAGE_SUFFIXES:
        raise DscloraError(f"--ext {args.ext}: unsupported output format (use one of {', '.join(IMAGE_SUFFIXES)})")
    device = _check_runtime(args)
    options = video.VideoOptions(args.codec, args.crf, args.pix_fmt, args.start, args.duration, dict(args.codec_option))
    videos = video.VideoRequest.from_inputs(args.inputs, args.output, args.recursive, options)  # each one probed
    outdir = check_output_folder(videos.folder, "-o")
    existing = "overwrite" if args.overwrite else "skip" if args.skip_existing else "refuse"
    weights_files = input_files(args.weights)
    plan = pipeline.Plan([])
    if videos.images:
        plan = pipeline.plan(videos.images, outdir, ext, args.suffix or "", args.recursive, existing, weights_files)
    if plan.ignored_in_subfolders:
        print(
            f"note: {plan.ignored_in_subfolders} image(s) in sub-folders not taken (add --recursive)", file=sys.stderr
        )
    for dst in plan.skipped_existing:
        print(f"skipped (exists): {dst}", file=sys.stderr)
    if not plan.jobs and not videos.infos:
        print("nothing to do: every output exists")
        return 0
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    sizes = [(i.height, i.width) for i in pipeline.verify_inputs(plan.jobs, max_pixels)]  # before the model
    loaded = load(args.weights, device, args.scale)
    pipeline.check_output_memory(plan.jobs, sizes, loaded.scale, device)  # before any forward
    video_jobs, skipped = videos.plan(args.suffix, loaded.scale, existing, [dst for _, dst in plan.jobs], weights_files)
    for dst in skipped:
        print(f"skipped (exists): {dst}", file=sys.stderr)
    if not plan.jobs and not video_jobs:
        print("nothing to do: every output exists")
        return 0
    upscaler, _ = _upscaler(args, loaded, device, sizes + videos.sizes())
    failures = pipeline.run(plan.jobs, upscaler, device, max_pixels, _progress()) if plan.jobs else 0
    done = len(plan.jobs) - failures
    if done:
        print(f"wrote {done} image(s) to {outdir} (x{loaded.scale})")
    failures += video.run(video_jobs, upscaler, device, options, _progress(), args.memory_budget * 2**20)
    if failures:
        total = len(plan.jobs) + len(video_jobs)
        print(f"dsclora: {failures} of {total} input(s) failed, each named above", file=sys.stderr)
    return EXIT_FAILED if failures else 0


def evaluate(args: argparse.Namespace) -> int:
    from dsclora.fs import check_outputs, write_json
    from dsclora.measure.evaluate import check_dataset, evaluate_dataset
    from dsclora.weights.load import input_files, load

    for root in args.data:
        if not Path(root).is_dir():
            raise DscloraError(f"--data {root}: folder not found")
    inputs = [*args.data, *input_files(args.weights)]
    check_outputs("eval", [args.json] if args.json else [], inputs, args.overwrite, what="--json")
    device = _check_runtime(args)
    loaded = load(args.weights, device, args.scale)
    for root in args.data:  # every pair decoded and its sizes checked before the first image is computed
        check_dataset(root, loaded.scale)
    upscaler, precision = _upscaler(args, loaded, device, [])
    results = [evaluate_dataset(upscaler, root, loaded.scale, device, _progress()) for root in args.data]
    print(f"weights: {loaded.label}   scale: x{loaded.scale}   (Y: BT.601, border {loaded.scale}; RGB PSNR as NTIRE)")
    print(f"{'dataset':<16}{'images':>7}{'PSNR-Y':>9}{'SSIM-Y':>9}{'PSNR-RGB':>10}")
    for r in results:
        print(f"{r['dataset']:<16}{r['images']:>7}{r['psnr_y']:>9.3f}{r['ssim_y']:>9.4f}{r['psnr_rgb']:>10.3f}")
    if args.json:
        payload = {"weights": loaded.label, "scale": loaded.scale, "precision": precision}
        payload |= {"self_ensemble": args.self_ensemble, "datasets": results}
        write_json(args.json, payload)
    return 0


def profile(args: argparse.Namespace) -> int:
    import torch

    from dsclora.fs import check_outputs, write_json
    from dsclora.measure.evaluate import check_dataset
    from dsclora.measure.profiling import ntire_report, profile
    from dsclora.runtime.upscale import check_forward_memory, forward_bytes_per_pixel
    from dsclora.weights.load import input_files, load

    if args.ntire and not args.data:
        raise DscloraError("--ntire needs --data: the validation set whose PSNR and runtime it reports")
    for flag, value in (("--data", args.data), ("--efdn-ms", args.efdn_ms)):
        if value is not None and not args.ntire:
            raise DscloraError(f"{flag} is used by --ntire only; add --ntire or leave {flag} out")
    if args.data and not Path(args.data).is_dir():
        raise DscloraError(f"--data {args.data}: folder not found")
    inputs = [*([args.data] if args.data else []), *input_files(args.weights)]
    check_outputs("profile", [args.json] if args.json else [], inputs, args.overwrite, what="--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _check_runtime(args)
    loaded = load(args.weights, device, network=True)
    h, w = args.size
    check_forward_memory(h, w, forward_bytes_per_pixel(loaded), device, "--size")
    if args.ntire:
        check_dataset(args.data, loaded.scale)
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
        write_json(args.json, figures)
    return 0


def _dynamic_shape(onnx_file: str) -> str:
    """What sizes a dynamic graph takes, as its metadata records them (a multiple, a batch fixed to 1)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(onnx_file, load_external_data=False).metadata_props}
    multiple = int(props.get("size_multiple", "1"))
    batch = "batch 1" if props.get("batch") == "1" else "dynamic batch"
    return f"{batch}, height/width {'any' if multiple == 1 else f'multiples of {multiple}'}"


def _convert(
    command: str,
    source: str,
    output: str,
    form: str,
    file_format: str | None,
    overwrite: bool,
    prefer_ema: bool = True,
    training_only: bool = False,
) -> int:
    """The one checked conversion behind ``convert`` and ``merge`` (``training_only``: a training checkpoint):
    merged, or SPAN's training form, in the source architecture's own format."""
    from dsclora.fs import check_outputs
    from dsclora.models.checks import check_same_function, checked_merge
    from dsclora.weights.checkpoints import file_format_of, read_train_state
    from dsclora.weights.load import load, network_file

    file_format_of(output, file_format)
    path = network_file(source)
    check_outputs(command, [output], [path, path.with_suffix(".json")], overwrite, what="OUT")
    if training_only:
        read_train_state(path)  # refuses anything but a training checkpoint
    loaded = load(source, prefer_ema=prefer_ema, merged=False)
    merged, diff = checked_merge(loaded.module, loaded.runnable)
    if form == "train":
        if loaded.hooks.train_form is None:
            raise DscloraError(f"--to train: {loaded.arch} has no re-parameterisable training form")
        trained = loaded.hooks.train_form(merged)
        diff = check_same_function(loaded.runnable(merged), loaded.runnable(trained), "training form")
    files = loaded.saver(merged, Path(output), train_form=form == "train")
    print(
        f"wrote {', '.join(map(str, files))}: {loaded.arch} {form} form, x{loaded.scale} "
        f"(max abs difference to the input {diff:.1e})"
    )
    return 0


def convert(args: argparse.Namespace) -> int:
    return _convert("convert", args.input, args.output, args.to, args.format, args.overwrite)


def merge(args: argparse.Namespace) -> int:
    return _convert(
        "merge", args.checkpoint, args.output, "deploy", None, args.overwrite, not args.no_ema, training_only=True
    )


def train(args: argparse.Namespace) -> int:
    from dsclora.train.config import describe, load_config

    config = load_config(args.config, args.overrides, check=not args.print_config)
    if args.print_config:
        print(describe(config), end="")
        return 0
    from dsclora.train.loop import Trainer

    summary = Trainer(config, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite).run()
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


def export(args: argparse.Namespace) -> int:
    from dsclora.data.images import check_image
    from dsclora.export.card import write_card
    from dsclora.fs import check_output_folder, check_outputs
    from dsclora.weights.checkpoints import file_format_of
    from dsclora.weights.load import input_files, load

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
    inputs = [*input_files(args.weights), *([args.check_image] if args.check_image else [])]
    check_outputs("export", _export_files(args), inputs, args.overwrite, what="-o")
    if fmt in ("spandrel", "safetensors"):
        file_format_of(args.output, "safetensors" if fmt == "safetensors" else None)
    if fmt == "onnx" and Path(args.output).suffix.lower() != ".onnx":
        raise DscloraError(f"-o {args.output}: an ONNX file should end in .onnx")
    if fmt == "onnx":
        from dsclora.export.onnx import OnnxOptions, check_options, export_onnx

        options = OnnxOptions(args.opset, args.precision, args.io, args.static, simplify=not args.no_simplify)
        check_options(options)
    probe = check_image(args.check_image)
    loaded = load(args.weights, network=True)
    if fmt == "onnx":
        metadata = {"scale": loaded.scale, "architecture": loaded.arch, "source": loaded.label}
        metadata |= {"exported_by": f"dsclora {__version__}"}
        diff = export_onnx(loaded, args.output, probe, options, metadata)
        files = [Path(args.output)]
        shape = "static {}x{}".format(*args.static) if args.static else _dynamic_shape(args.output)
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
