"""MM-DINOv2 multi-crop augmentation of one cached 96x96 tumour slice (numpy only).

Per crop, in order: a box of linear side fraction s ~ U(scale) and aspect ratio r ~ U(ratio) (height 96*s,
width 96*s*r), centred on a random tumour pixel and shifted (not clipped) to stay inside the image; bicubic
antialiased resize (Pillow's kernel); clamp to [0, 1]; horizontal flip; Gaussian blur (kernel 9, sigma ~ U(0.1, 1)
as in the reference, with DINOv2's intended probabilities 1.0 / 0.1 for the two global crops and 0.5 for local
crops instead of the reference's inverted 0 / 0.9 / 0.5); gamma contrast on the second global crop; then
``(x - 0.45) / 0.22`` on non-zero pixels only. Missing sequences stay zero. Further global crops (if configured)
get the second global crop's augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage
from threadpoolctl import ThreadpoolController

MEAN, STD = 0.45, 0.22
TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class CropConfig:
    """Multi-crop settings; the defaults are MM-DINOv2's."""

    global_crops: int = 2
    global_size: int = 98
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_crops: int = 8
    local_size: int = 56
    local_scale: tuple[float, float] = (0.2, 0.5)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    blur_radius: int = 4
    global_blur_p: tuple[float, float] = (1.0, 0.1)
    local_blur_p: float = 0.5
    gamma: tuple[float, float] = (0.75, 1.5)
    mean: float = MEAN
    std: float = STD


@lru_cache(maxsize=1)
def single_threaded_blas():
    """Run BLAS single-threaded in this process from now on. The matrices here are tiny, and a
    multi-threaded BLAS is 10-50x slower on them when the cores are busy (e.g. with other loader
    workers). Set once, not per call: a per-call limit, restored on exit, races between Grain's
    prefetch threads, so a crop's rounding would depend on timing and runs would not repeat."""
    return ThreadpoolController().limit(limits=1, user_api="blas")


@lru_cache(maxsize=512)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of Pillow's antialiased bicubic resampling along one axis."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    return np.ascontiguousarray(np.asarray(eye.resize((n_out, n_in), Image.Resampling.BICUBIC)).T)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic antialiased resize of (..., H, W) images to (..., size, size)."""
    rows, cols = resize_matrix(images.shape[-2], size), resize_matrix(images.shape[-1], size)
    return rows @ images.astype(np.float32) @ cols.T


def normalise(images: np.ndarray, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """(x - mean) / std on non-zero pixels; zero background stays zero. Pixels below float32's smallest normal
    number (the far tails of a blur, ~0.03 % of pixels) count as zero, as on an accelerator that flushes
    denormals to zero (`training/device_crops.py`)."""
    return np.where(np.abs(images) >= TINY, (images - mean) / std, 0.0).astype(np.float32)


def crop_box(foreground: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], scale: tuple[float, float],
             ratio: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box centred on a random ``foreground`` pixel (``np.nonzero`` of the tumour
    mask), shifted to lie inside an image of ``shape``. The image centre stands in for an empty foreground."""
    height_img, width_img = shape
    side = rng.uniform(*scale)
    height = _clamp(round(height_img * side), 1, height_img)
    width = _clamp(round(width_img * side * rng.uniform(*ratio)), 1, width_img)
    ys, xs = foreground
    if len(ys):
        k = rng.integers(len(ys))
        cy, cx = int(ys[k]), int(xs[k])
    else:
        cy, cx = height_img // 2, width_img // 2
    top, left = _clamp(cy - height // 2, 0, height_img - height), _clamp(cx - width // 2, 0, width_img - width)
    return top, left, height, width


def _clamp(value: int, low: int, high: int) -> int:
    """``int(np.clip(value, low, high))`` for one Python int, without numpy's per-call overhead."""
    return int(min(max(value, low), high))


def blur_kernel(n: int, sigma: float, radius: int) -> np.ndarray:
    """(n, n) matrix of scipy's 1-D Gaussian filter (mirror border, kernel radius ``radius``) along one axis."""
    eye = np.eye(n, dtype=np.float32)
    return ndimage.gaussian_filter1d(eye, sigma, axis=0, mode="mirror", truncate=radius / sigma)


def blur(images: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Gaussian blur of square (..., N, N) images: ``blur_kernel`` applied along both axes."""
    kernel = blur_kernel(images.shape[-1], sigma, radius)
    return kernel @ images @ kernel.T


def adjust_gamma(images: np.ndarray, gamma: float) -> np.ndarray:
    """MONAI-style contrast over the whole tensor: ((x - min) / range) ** gamma * range + min."""
    low, span = images.min(), images.max() - images.min()
    return ((images - low) / (span + 1e-7)) ** gamma * span + low


@dataclass(frozen=True)
class ViewDraw:
    """The random choices of one crop: its box, horizontal flip, blur sigma and gamma (None: not applied)."""

    box: tuple[int, int, int, int]
    flip: bool
    sigma: float | None
    gamma: float | None


def draw_view(foreground: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], scale: tuple[float, float],
              blur_p: float, gamma: bool, cfg: CropConfig, rng: np.random.Generator) -> ViewDraw:
    """One crop's random choices, drawn from ``rng`` in a fixed order (box, flip, blur, sigma, gamma)."""
    box = crop_box(foreground, shape, scale, cfg.ratio, rng)
    flip = rng.random() < cfg.flip_p
    sigma = rng.uniform(*cfg.blur_sigma) if rng.random() < blur_p else None
    return ViewDraw(box, flip, sigma, rng.uniform(*cfg.gamma) if gamma else None)


def view(image: np.ndarray, present: np.ndarray, size: int, draw: ViewDraw, cfg: CropConfig) -> np.ndarray:
    """The augmented crop (S, size, size) of ``image`` (S, H, W) that ``draw`` describes."""
    top, left, height, width = draw.box
    x = np.clip(resize(image[:, top:top + height, left:left + width], size), 0.0, 1.0)
    if draw.flip:
        x = x[..., ::-1]
    if draw.sigma is not None:
        x = blur(x, draw.sigma, cfg.blur_radius)
    if draw.gamma is not None:
        x = adjust_gamma(x, draw.gamma)
    return normalise(x, cfg.mean, cfg.std) * present[:, None, None]


def _draws(mask: np.ndarray, cfg: CropConfig, rng: np.random.Generator) -> tuple[list, list]:
    """The random choices of every global and local crop of one slice, in the order ``multi_crop`` uses."""
    foreground = np.nonzero(mask)
    globals_ = [draw_view(foreground, mask.shape, cfg.global_scale, cfg.global_blur_p[min(i, 1)], i > 0, cfg, rng)
                for i in range(cfg.global_crops)]
    locals_ = [draw_view(foreground, mask.shape, cfg.local_scale, cfg.local_blur_p, False, cfg, rng)
               for _ in range(cfg.local_crops)]
    return globals_, locals_


def multi_crop(image: np.ndarray, mask: np.ndarray, present: np.ndarray, cfg: CropConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(global crops (G, S, gs, gs), local crops (L, S, ls, ls)) float32 of one slice ``image`` (S, H, W)."""
    single_threaded_blas()
    globals_, locals_ = _draws(mask, cfg, rng)
    return (np.stack([view(image, present, cfg.global_size, d, cfg) for d in globals_]),
            np.stack([view(image, present, cfg.local_size, d, cfg) for d in locals_]))


def multi_crop_operators(mask: np.ndarray, cfg: CropConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The crops ``multi_crop`` would draw from the same ``rng``, as the linear maps `training/device_crops.py`
    applies on the accelerator, per crop family (``global_*``, ``local_*``; n crops of side ``size``):
    ``rows`` (n, size, H) and ``cols`` (n, size, W) crop and resize (a flip reverses ``cols``), ``blur``
    (n, size, size) (the identity when not blurred), ``gamma`` (n,) (0: none). Nothing touches the image."""
    if (cfg.mean, cfg.std) != (MEAN, STD):
        raise ValueError(f"crops on the device normalise with ({MEAN}, {STD}), not ({cfg.mean}, {cfg.std}); "
                         "set data.augment_on=host to change the normalisation")
    out = {}
    for family, size, draws in zip(("global", "local"), (cfg.global_size, cfg.local_size), _draws(mask, cfg, rng)):
        rows = np.zeros((len(draws), size, mask.shape[0]), np.float32)
        cols = np.zeros((len(draws), size, mask.shape[1]), np.float32)
        blurs = np.broadcast_to(np.eye(size, dtype=np.float32), (len(draws), size, size)).copy()
        for c, d in enumerate(draws):
            top, left, height, width = d.box
            rows[c, :, top:top + height] = resize_matrix(height, size)
            cols[c, :, left:left + width] = resize_matrix(width, size)[::-1] if d.flip else resize_matrix(width, size)
            if d.sigma is not None:
                blurs[c] = blur_kernel(size, d.sigma, cfg.blur_radius)
        gamma = np.array([0.0 if d.gamma is None else d.gamma for d in draws], np.float32)
        out.update({f"{family}_rows": rows, f"{family}_cols": cols, f"{family}_blur": blurs, f"{family}_gamma": gamma})
    return out


def choose_slice(axis: np.ndarray, counts: np.ndarray, rng: np.random.Generator, min_voxels: int) -> int:
    """Position of a random slice: random axis, then a random slice with >= min_voxels tumour voxels (else the
    largest)."""
    on_axis = np.flatnonzero(axis == rng.choice(np.unique(axis)))
    big = on_axis[counts[on_axis] >= min_voxels]
    return int(rng.choice(big)) if len(big) else int(on_axis[np.argmax(counts[on_axis])])


def eval_view(image: np.ndarray, present: np.ndarray, size: int, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """Whole slice (S, H, W) resized to (S, size, size), clamped and normalised as the training crops."""
    single_threaded_blas()
    return normalise(np.clip(resize(image, size), 0.0, 1.0), mean, std) * present[:, None, None]
