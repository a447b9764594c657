"""`python -m mmdino_jax.features --checkpoint DIR --input X.npy --output Y.npz`: final-LayerNorm embeddings
of your own images. X is float32 (N, S, H, W), one grayscale image per MRI sequence (H, W multiples of 14);
Y.npz holds `cls` (N, D), `patch` (N, S*H/14*W/14, D) and, for register models, `registers` (N, R, D)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from mmdino_jax.constants import sequence_indices
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.models.io import load_model


def extract_features(checkpoint: str | Path, images: np.ndarray, sequences=None, batch_size: int = 32) -> dict:
    """Embeddings of `images` (N, S, H, W) with the backbone of a model directory. `sequences` (names, in
    channel order) defaults to the ones recorded in its model.json."""
    backbone, _, meta = load_model(checkpoint)
    sequences = sequences or meta.get("sequences")
    if not sequences:
        raise ValueError(f"{checkpoint}: model.json records no sequences; pass --sequences, e.g. t1,t1c,t2,flair")
    names = tuple(sequences.split(",")) if isinstance(sequences, str) else tuple(sequences)
    sequence_indices(names)
    p = backbone.cfg.patch_size
    if images.ndim != 4 or images.shape[1] != len(names):
        raise ValueError(f"input must be (N, S={len(names)}, H, W) for sequences {','.join(names)}, got {images.shape}")
    if images.shape[2] % p or images.shape[3] % p:
        raise ValueError(f"image size {images.shape[2]}x{images.shape[3]} is not a multiple of the patch size {p}")
    outputs = ("cls", "patch") + (("registers",) if backbone.cfg.num_registers else ())
    graphdef, params = nnx.split(backbone)
    extractor = FeatureExtractor(graphdef, params, names, batch_size=batch_size, outputs=outputs)
    return extractor(np.asarray(images, np.float32), desc="features")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdino_jax.features", description=__doc__)
    ap.add_argument("--checkpoint", required=True, help="model directory (python -m weights_conversion, or training)")
    ap.add_argument("--input", required=True, help="float32 .npy of shape (N, S, H, W)")
    ap.add_argument("--output", required=True, help=".npz to write")
    ap.add_argument("--sequences", default=None, help="channel order, e.g. t1,t1c,t2,flair (default: model.json)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        images = np.load(args.input, allow_pickle=False)
        feats = extract_features(args.checkpoint, images, args.sequences, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"features: error: {e}", file=sys.stderr)
        return 2
    np.savez(args.output, **feats)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v.shape}" for k, v in feats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
