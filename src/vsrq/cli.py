"""The ``vsrq`` command: argument parsing only; every command calls the Python API.

Errors caused by input end in one line on stderr (``vsrq: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from vsrq import api
from vsrq.errors import VsrqError

Handler = Callable[[argparse.Namespace], int]


def _cmd_upscale(args: argparse.Namespace) -> int:
    model = api.load(args.model)
    clips = api.upscale(model, args.input, args.output, args.chunk, args.overlap, args.overwrite)
    print(f"wrote {len(clips)} clip(s) to {args.output}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    report = api.evaluate(args.pred, args.gt, y=args.y, crop=args.crop)
    print(report.to_markdown())
    if args.json:
        report.write_json(Path(args.json))
    if args.csv:
        report.write_csv(Path(args.csv))
    return 0


def _cmd_degrade(args: argparse.Namespace) -> int:
    clips = api.degrade_path(args.input, args.output, args.mode, args.scale, args.modcrop, args.overwrite)
    print(f"wrote {len(clips)} clip(s) to {args.output} ({args.mode.upper()} x{args.scale})")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from vsrq.models.registry import NAMED_MODELS, resolve_weights

    for name, named in NAMED_MODELS.items():
        try:
            where = str(resolve_weights(named.filename))
        except VsrqError:
            where = "(weights not found)"
        print(f"{name:20s} {named.degradation.upper()}  {named.description}\n{'':20s} {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsrq", description="Low-bit post-training quantization for video super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="super-resolve a video, a frame folder or a folder of clips")
    p.add_argument("input", help="video file, folder of frames, or folder of clip folders")
    p.add_argument("output", help="output folder of PNG frames (mirrors the input) or an .mp4 file")
    p.add_argument("--model", required=True, help="model name (see `vsrq models`), .pth checkpoint or .vsrq file")
    p.add_argument("--chunk", type=int, default=16, help="output frames per window (default 16)")
    p.add_argument("--overlap", type=int, default=8, help="context frames either side of a window (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("eval", help="PSNR/SSIM of predictions against ground truth")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--y", action="store_true", help="evaluate the Y channel (BT.601), as Vid4/Vimeo tables do")
    p.add_argument("--crop", type=int, default=0, help="pixels cropped from each border")
    p.add_argument("--json", help="write per-frame, per-clip and mean scores as JSON")
    p.add_argument("--csv", help="write per-frame and per-clip scores as CSV")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("degrade", help="make LR frames from GT frames (BI or BD)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--mode", choices=("bi", "bd"), required=True)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--modcrop", action="store_true", help="crop frames to a multiple of the scale first")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_degrade)

    p = sub.add_parser("models", help="list named models and where their weights resolve")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VsrqError as exc:
        print(f"vsrq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vsrq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
