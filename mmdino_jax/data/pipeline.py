"""Grain input pipeline over a prepared cache (see ``prepare.py``): training batches and evaluation arrays.

Training batch (numpy): ``global`` (G*B, S, 98, 98) and ``local`` (L*B, S, 56, 56) float32 crop-major (rows
k*B .. k*B+B-1 hold crop k of every sample), ``present`` (B, S) bool, ``label`` (B,) int32 (-1 = unlabeled).
With ``crops_on_device``, ``image`` (B, S, 96, 96) float16 and the crops' operators (B, n, ...), sample-major
(``augment.multi_crop_operators``), replace ``global`` and ``local``: the step makes the crops
(``device_crops.expand_crops``).
Evaluation uses the same normalisation as training, (x - 0.45) / 0.22 on non-zero pixels; the reference's
0.225 at evaluation time is a train/eval mismatch we do not copy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grain
import numpy as np
from absl import flags

from mmdino_jax.constants import sequence_indices
from mmdino_jax.data.augment import CropConfig, choose_slice, eval_view, multi_crop, multi_crop_operators
from mmdino_jax.data.prepare import CACHE_VERSION

AXIAL = 2  # after nib.as_closest_canonical (RAS), axis 2 runs inferior -> superior


class CachedSplit:
    """Random access to one split of a prepared cache; the arrays are memory-mapped on first use per process."""

    def __init__(self, cache_dir: str | Path, split: str):
        self.dir = Path(cache_dir) / split
        if not (self.dir / "index.json").is_file():
            found = sorted(p.parent.name for p in Path(cache_dir).glob("*/index.json"))
            raise FileNotFoundError(f"no prepared split {split!r} in {cache_dir} (found {found}); "
                                    "run python -m mmdino_jax.data.prepare first")
        index = json.loads((self.dir / "index.json").read_text())
        version = index.get("version", 1)
        if version != CACHE_VERSION:
            raise ValueError(f"cache {cache_dir} was made by cache version {version}, this code reads version "
                             f"{CACHE_VERSION}; delete it or re-run python -m mmdino_jax.data.prepare on it")
        self.ids: list[str] = index["ids"]
        self.labels = np.asarray(index["labels"], np.int32)
        self.present = np.asarray(index["present"], bool).reshape(len(self.ids), -1)
        slices = np.load(self.dir / "slices.npy")
        self.offsets = np.searchsorted(slices[:, 0], np.arange(len(self.ids) + 1))
        self.axis, self.counts = slices[:, 1], slices[:, 3]
        self._arrays = None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, subject: int) -> slice:
        return slice(self.offsets[subject], self.offsets[subject + 1])

    def slice(self, row: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(images (4, 96, 96) ``dtype``, tumour mask (96, 96) bool) of one cached slice (stored as float16)."""
        images, labels = self.labeled_slice(row, dtype)
        return images, labels > 0

    def labeled_slice(self, row: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(images (4, 96, 96) ``dtype``, labels (96, 96) uint8 0/1/2/4) of one cached slice."""
        if self._arrays is None:
            self._arrays = tuple(np.load(self.dir / f"{name}.npy", mmap_mode="r") for name in ("images", "seg"))
        images, seg = self._arrays
        return images[row].astype(dtype), np.asarray(seg[row])

    def largest_axial(self, subject: int) -> int:
        """Row of the subject's axial slice with the most tumour voxels."""
        rows = np.arange(self.offsets[subject], self.offsets[subject + 1])
        axial = rows[self.axis[rows] == AXIAL]
        return int(axial[np.argmax(self.counts[axial])])


class TrainSample:
    """Grain random map: (subject, label) -> one multi-crop sample (or, ``on_device``, its slice and the crops'
    operators: the same random draws)."""

    def __init__(self, data: CachedSplit, sequences: np.ndarray, cfg: CropConfig, min_voxels: int,
                 on_device: bool = False):
        self.data, self.sequences, self.cfg, self.min_voxels = data, sequences, cfg, min_voxels
        self.on_device = on_device

    def __call__(self, element: tuple[int, int], rng: np.random.Generator) -> dict:
        subject, label = element
        rows = self.data.rows(subject)
        row = rows.start + choose_slice(self.data.axis[rows], self.data.counts[rows], rng, self.min_voxels)
        image, mask = self.data.slice(row, np.float16 if self.on_device else np.float32)
        present = self.data.present[subject, self.sequences]
        sample = {"present": present, "label": np.int32(label)}
        if self.on_device:
            return {"image": image[self.sequences], **multi_crop_operators(mask, self.cfg, rng), **sample}
        global_crops, local_crops = multi_crop(image[self.sequences], mask, present, self.cfg, rng)
        return {"global": global_crops, "local": local_crops, **sample}


CROP_MAJOR = ("global", "local")


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: the crops crop-major, everything else sample-major."""

    def crop_major(key):
        crops = np.stack([s[key] for s in samples], axis=1)  # (crops, B, S, H, W)
        return crops.reshape(-1, *crops.shape[2:])

    return {key: crop_major(key) if key in CROP_MAJOR else np.stack([s[key] for s in samples])
            for key in samples[0]}


def host_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Crop-major batch arrays (n*B, ...) -> sample-major (B, n, ...), so samples lead (the step's layout)."""
    b = batch["label"].shape[0]
    out = dict(batch)
    for name in CROP_MAJOR:
        if name not in batch:
            continue
        x = batch[name]
        out[name] = np.swapaxes(x.reshape(x.shape[0] // b, b, *x.shape[1:]), 0, 1)
    return out


def subsample_labels(labels: np.ndarray, keep_fraction: float, seed: int) -> np.ndarray:
    """Keep round(keep_fraction * n_c) labels of each class c (chosen by ``seed``); the rest become -1."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"label_keep_fraction must be in [0, 1], got {keep_fraction}")
    rng = np.random.default_rng(seed)
    out = labels.copy()
    for c in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == c))
        out[members[round(keep_fraction * len(members)):]] = -1
    return out


class EpochShuffled:
    """Random-access source: ``elements`` in a new permutation every epoch, repeated forever; item ``i`` is
    element ``perm_e[i % n]`` of epoch ``e = i // n``. One numpy permutation per epoch: Grain's
    ``MapDataset.shuffle`` costs ~16 ms / n per item (1.3 ms for a 12-subject labeled pool), more than the
    multi-crop of a sample."""

    def __init__(self, elements: list, seed: int):
        self.elements, self.seed = list(elements), seed
        self._last = (-1, None)  # (epoch, permutation), replaced as one tuple: Grain reads from several threads

    def __len__(self) -> int:
        return sys.maxsize

    def permutation(self, epoch: int) -> np.ndarray:
        last_epoch, perm = self._last
        if last_epoch != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.elements))
            self._last = (epoch, perm)
        return perm

    def __getitem__(self, index: int):
        epoch, position = divmod(index, len(self.elements))
        return self.elements[self.permutation(epoch)[position]]


def _stream(elements: list[tuple[int, int]], name: str, seed: int, process_index: int, process_count: int):
    """This process's shard of ``elements``, shuffled anew every epoch, repeated forever."""
    shard = elements[process_index::process_count]
    if not shard:
        raise ValueError(f"no {name} training subject for process {process_index} of {process_count} "
                         f"({len(elements)} in the cache); prepare more subjects or change labeled_fraction")
    return grain.MapDataset.source(EpochShuffled(shard, seed))


def train_dataset(cache_dir: str | Path, *, sequences, batch_size: int, seed: int,
                  labeled_fraction: float | None = None, label_keep_fraction: float = 1.0,
                  process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                  prefetch: int = 2, split: str = "train", min_tumour_voxels: int = 500,
                  crops_on_device: bool = False, **crop_cfg) -> grain.IterDataset:
    """Infinite, deterministic Grain dataset of training batches for this process.

    ``labeled_fraction``: share of labeled samples in every batch (None = the cache's natural mix).
    ``label_keep_fraction``: stratified share of labels kept per class (the rest train as unlabeled).
    Each process draws ``batch_size // process_count`` samples per batch from its own shard of subjects.
    ``num_workers`` > 0 builds batches in that many worker processes; ``prefetch`` batches are read ahead by as
    many threads in each (0 = synchronous).
    ``crops_on_device``: batches of slices and crop operators, for `device_crops` in the step (see above).
    ``crop_cfg`` overrides :class:`CropConfig` fields. Subjects with none of ``sequences`` are left out.
    """
    cfg = CropConfig(**crop_cfg)
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    data = CachedSplit(cache_dir, split)
    seq = np.asarray(sequence_indices(sequences))
    labels = subsample_labels(data.labels, label_keep_fraction, seed)
    usable = np.flatnonzero(data.present[:, seq].any(axis=1))
    elements = [(int(i), int(labels[i])) for i in usable]
    if labeled_fraction is None:
        pools = [("usable", elements, 1.0)]
    elif 0.0 <= labeled_fraction <= 1.0:
        pools = [("labeled", [e for e in elements if e[1] >= 0], labeled_fraction),
                 ("unlabeled", [e for e in elements if e[1] < 0], 1.0 - labeled_fraction)]
    else:
        raise ValueError(f"labeled_fraction must be in [0, 1] or None, got {labeled_fraction}")
    streams = [_stream(pool, name, seed + k, process_index, process_count)
               for k, (name, pool, weight) in enumerate(pools) if weight > 0]
    weights = [weight for _, _, weight in pools if weight > 0]
    ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
    sample_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = ds.random_map(TrainSample(data, seq, cfg, min_tumour_voxels, crops_on_device), seed=sample_seed)
    ds = ds.batch(batch_size // process_count, drop_remainder=True, batch_fn=collate)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; scripts without absl.app need this
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return ds


def eval_arrays(cache_dir: str | Path, split: str, sequences, size: int = 224) -> dict:
    """Each subject's largest axial tumour crop resized to ``size``: images (N, S, size, size) float32,
    present (N, S) bool, label (N,) int32, ids."""
    data = CachedSplit(cache_dir, split)
    seq = np.asarray(sequence_indices(sequences))
    present = data.present[:, seq]
    images = np.zeros((len(data), len(seq), size, size), np.float32)
    for i in range(len(data)):
        images[i] = eval_view(data.slice(data.largest_axial(i))[0][seq], present[i], size)
    return {"images": images, "present": present, "label": data.labels.copy(), "ids": list(data.ids)}
