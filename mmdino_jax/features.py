"""`python -m mmdino_jax.features --checkpoint DIR --input X.npy --output Y.npz`: final-LayerNorm embeddings
of your own images. X is float32 (N, S, H, W), one grayscale image per MRI sequence (H, W multiples of 14);
Y.npz holds `cls` (N, D), `patch` (N, S*H/14*W/14, D) and, for register models, `registers` (N, R, D).
Non-finite input pixels or outputs are an error naming the samples: no NaN is written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from mmdino_jax.cli_errors import run_cli
from mmdino_jax.constants import sequence_indices
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.models.io import load_model
from mmdino_jax.run_checks import check_output_file

NPY_MAGIC = b"\x93NUMPY"


def load_images(path) -> np.ndarray:
    """The .npy at ``path`` as a numeric array; ValueError for a file that is not one (never unpickles)."""
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError(f"{path} is not a .npy file (no NumPy header); save the array with numpy.save")
    try:
        images = np.load(path, allow_pickle=False)
    except ValueError as err:  # an object array needs pickle
        raise ValueError(f"{path} holds Python objects ({err}); save a float32 array with numpy.save") from None
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise ValueError(f"{path} holds {images.dtype} values; save a float32 array of shape (N, S, H, W)")
    return images


def nonfinite_samples(tree: dict) -> list[int]:
    """Indices of the samples (leading axis) with a NaN or inf anywhere in ``tree``'s arrays."""
    bad = np.zeros(len(next(iter(tree.values()))), bool)
    for v in tree.values():
        bad |= ~np.isfinite(v.reshape(len(v), -1)).all(axis=1)
    return np.flatnonzero(bad).tolist()


def _named(indices: list[int]) -> str:
    return f"{len(indices)} sample(s) (index {', '.join(map(str, indices[:10]))}{', ...' if len(indices) > 10 else ''})"


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
    if len(images) == 0:
        raise ValueError("the input holds no images (N = 0)")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if bad := nonfinite_samples({"input": images}):
        raise ValueError(f"the input has NaN or inf pixels in {_named(bad)}; replace them (e.g. numpy.nan_to_num) "
                         "or drop those samples")
    outputs = ("cls", "patch") + (("registers",) if backbone.cfg.num_registers else ())
    graphdef, params = nnx.split(backbone)
    extractor = FeatureExtractor(graphdef, params, names, batch_size=batch_size, outputs=outputs)
    feats = extractor(np.asarray(images, np.float32), desc="features")
    if bad := nonfinite_samples(feats):
        raise ValueError(f"the model produced NaN or inf features for {_named(bad)} of finite input: its weights "
                         f"are broken (check {checkpoint} with python -m weights_conversion)")
    return feats


def main(argv: list[str] | None = None) -> int:
    """The command line; errors end in one line and exit status 2 (``cli_errors``)."""
    return run_cli(_main, argv, prog="python -m mmdino_jax.features")


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdino_jax.features", description=__doc__)
    ap.add_argument("--checkpoint", required=True, help="model directory (python -m weights_conversion, or training)")
    ap.add_argument("--input", required=True, help="float32 .npy of shape (N, S, H, W)")
    ap.add_argument("--output", required=True, help=".npz to write")
    ap.add_argument("--sequences", default=None, help="channel order, e.g. t1,t1c,t2,flair (default: model.json)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    check_output_file(args.output, "--output")
    feats = extract_features(args.checkpoint, load_images(args.input), args.sequences, args.batch_size)
    np.savez(args.output, **feats)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v.shape}" for k, v in feats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
