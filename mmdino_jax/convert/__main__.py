"""`python -m weights_conversion SRC DST`: PyTorch DINOv2 / MM-DINOv2 checkpoint <-> mmdino_jax model directory.

SRC a checkpoint file (.pth/.pt/.bin, .safetensors, .npz) or HF model directory -> DST model directory.
SRC a model directory (has model.json), or --to-torch -> DST state dict file (.pth/.pt, .safetensors or .npz)
in the DINOv2 hub layout, or with --layout hf a transformers Dinov2 directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmdino_jax.cli_errors import run_cli
from mmdino_jax.convert.checkpoints import HEAD_CHOICES, export_checkpoint, import_checkpoint


def _parse_override(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    """The command line; errors end in one line and exit status 2 (``mmdino_jax.cli_errors``)."""
    return run_cli(_main, argv, prog="python -m weights_conversion")


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m weights_conversion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="checkpoint file / HF directory, or a model directory to export")
    ap.add_argument("dst", help="model directory to create, or the state-dict file to write")
    ap.add_argument("--branch", default="teacher", choices=("teacher", "student"),
                    help="which half of a training checkpoint to convert (default teacher)")
    ap.add_argument("--head", default="auto", choices=HEAD_CHOICES,
                    help="head to keep: auto = dino_head when present (default)")
    ap.add_argument("--sequences", default=None,
                    help="MRI sequences the model was trained on, e.g. t2,t1,t1c,flair (recorded in model.json)")
    ap.add_argument("--seed", type=int, default=0, help="seed for parameters the checkpoint lacks")
    ap.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[],
                    metavar="KEY=VALUE", help="ViTConfig override, e.g. --set num_heads=6 --set dtype=\"bfloat16\"")
    ap.add_argument("--arch", choices=("vits14", "vitb14", "vitl14", "vitg14"),
                    help="force the architecture (checked against the checkpoint's shapes)")
    ap.add_argument("--to-torch", action="store_true", help="export SRC (a model directory) to PyTorch names")
    ap.add_argument("--layout", default="hub", choices=("hub", "hf"),
                    help="export layout: DINOv2 hub state dict (default) or transformers directory")
    ap.add_argument("--no-head", action="store_true", help="export: write the backbone only")
    args = ap.parse_args(argv)

    src = Path(args.src)
    if args.to_torch or (src / "model.json").is_file():
        out = export_checkpoint(src, args.dst, include_head=not args.no_head, layout=args.layout)
    else:
        out = import_checkpoint(src, args.dst, branch=args.branch, head=args.head, sequences=args.sequences,
                                seed=args.seed, arch=args.arch, **dict(args.overrides))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
