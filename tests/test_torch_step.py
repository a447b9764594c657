"""bench/torch_step.py, the PyTorch reference step: its masks follow DINOv2's collate, and its heads see row
counts that do not depend on the random masks, so that torch.compile builds each graph once."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from torch_step import TorchStep, make_batch  # noqa: E402

from mmdino_jax.config_base import load_config  # noqa: E402


@pytest.fixture(scope="module")
def smoke():
    config = load_config(str(ROOT / "configs/demo.py:smoke"))
    return config, TorchStep(config)


def test_masks_follow_dinov2_collate_and_stay_under_the_bound(smoke):
    config, step = smoke
    s = config.ssl
    crops, n, n_seq = 16, 49, 4
    n_masked = int(crops * s.mask_sample_probability)
    # crop i of the masked ones takes at most floor(n * r_{i+1}) tokens, r = linspace(ratio_min_max)
    most = sorted((math.floor(n * r + 1e-6) for r in np.linspace(*s.mask_ratio_min_max, n_masked + 1)[1:]),
                  reverse=True) + [0] * (crops - n_masked)
    present = torch.ones(crops, n_seq, dtype=torch.bool)
    present[3, 2] = False  # an absent sequence is masked but is no target
    bound = step.target_bound(crops, n)
    for seed in range(20):
        torch.manual_seed(seed)
        mask, targets = step._masks(present, n)
        assert not targets[3, 2].any() and mask[3, 2].all()
        whole = mask.all(dim=2)  # sequences masked whole
        assert (whole.sum(1) >= s.modality_masked).all()
        # the block mask: the tokens masked on every sequence not masked whole
        blocks = torch.stack([mask[i][~whole[i]].all(dim=0).sum() for i in range(crops)])
        assert all(b <= m for b, m in zip(sorted(blocks.tolist(), reverse=True), most))
        assert int((blocks > 0).sum()) == n_masked
        assert int(targets.sum()) <= bound


def test_heads_see_the_same_rows_every_step(smoke):
    config, step = smoke
    seen = []
    for name in ("student", "teacher"):
        record = lambda _, args, name=name: seen.append((name, args[0].shape[0]))  # noqa: E731
        getattr(step, name)["head"].register_forward_pre_hook(record)
    batch = make_batch(config)
    b, n_g = batch["global"].shape[:2]
    n_l = batch["local"].shape[1]
    bound = step.target_bound(b * n_g, (config.data.global_crops_size // step.cfg.patch_size) ** 2)
    for seed in range(3):
        torch.manual_seed(seed)
        seen.clear()
        assert math.isfinite(step(batch))
        assert sorted(seen) == sorted([("teacher", b * n_g), ("teacher", bound),
                                       ("student", b * n_g), ("student", b * n_l), ("student", bound)])


def test_more_targets_than_the_bound_is_an_error(smoke):
    _, step = smoke
    with pytest.raises(ValueError, match="exceed their bound 3"):
        step.head_on_targets(lambda x: x, torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.bool), 3)


@pytest.mark.parametrize("mode", ["", "full", "regional"])
def test_compile_modes_wrap_the_backbone_or_each_block(smoke, mode):
    model = TorchStep(smoke[0], compile=mode).student
    backbone, head = model["backbone"], model["head"]
    expected = {"": [], "full": [backbone, head], "regional": [*backbone.hf.encoder.layer, head]}[mode]
    assert [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None] == expected


def test_unknown_compile_mode_is_an_error(smoke):
    with pytest.raises(ValueError, match="compile must be"):
        TorchStep(smoke[0], compile="max-autotune")
