"""The reproduction grid (python -m mmdino_jax.experiments.reproduce, docs/reproduction.md): one run config per
arm and size, and the grid (seeds x label fractions) of each size.

  --config configs/reproduce.py:ARM[,SIZE]   ARM in ARMS, SIZE in SIZES (default "default")

Every arm of a size shares the cohort (generated once, every train subject labeled; a cell's label fraction
keeps a stratified, seeded share of the train labels: data.label_keep_fraction), the model and the evaluation:
    mmdino               the demo recipe (configs/demo.py) with full-modality masking, at the size's scale
    no_modality_masking  the same without whole-sequence masking (ssl.modality_masked=0)
    supervised           the same ViT trained end to end with cross-entropy on the kept labels only
                         (configs/supervised_baseline.py)
    random_init          the mmdino config's backbone at its random initialisation, frozen
    radiomics            IBSI features of the evaluation slice (mmdino_jax/experiments/radiomics.py); the
                         mmdino config supplies the data and evaluation settings
"""

from pathlib import Path

HERE = Path(__file__).parent
ARMS = ("mmdino", "no_modality_masking", "supervised", "random_init", "radiomics")
BACKBONE_ARMS = ARMS[:4]

# Per size: the grid, the cohort, the model, the crops and the training budget. "default" is sized to finish in
# about an hour on a 2-core CPU (docs/reproduction.md: measured), "quick" in seconds per cell (tests), "gpu" for
# one accelerator (a prepared command, docs/reproduction.md).
SIZES = {
    "quick": dict(seeds=2, fractions=(0.5, 1.0), subjects=(12, 9, 9), resolution=4.0, steps=2, embed_dim=32,
                  depth=1, heads=2, head_hidden=32, head_bottleneck=16, batch=4, local_crops=1, global_size=28,
                  local_size=14, eval_size=28, bootstrap=50, c_grid=4),
    "default": dict(seeds=3, fractions=(0.1, 0.25, 1.0), subjects=(160, 100, 200), resolution=4.0, steps=60,
                    embed_dim=96, depth=3, heads=3, head_hidden=256, head_bottleneck=64, batch=16, local_crops=2,
                    global_size=56, local_size=28, eval_size=56, bootstrap=500, c_grid=10),
    "gpu": dict(seeds=5, fractions=(0.1, 0.25, 1.0), subjects=(600, 200, 400), resolution=2.0, steps=3000,
                embed_dim=384, depth=12, heads=6, head_hidden=2048, head_bottleneck=256, batch=64, local_crops=8,
                global_size=98, local_size=56, eval_size=98, bootstrap=1000, c_grid=12),
}


def grid(size: str) -> dict:
    """The size's settings (see SIZES), checked."""
    if size not in SIZES:
        raise ValueError(f"configs/reproduce.py: unknown size {size!r} ({' | '.join(SIZES)})")
    return SIZES[size]


def get_config(arg=None):
    from mmdino_jax.config_base import load_config

    arm, _, size = (arg or "mmdino").partition(",")
    s = grid(size or "default")
    if arm not in ARMS:
        raise ValueError(f"configs/reproduce.py: unknown arm {arm!r} ({' | '.join(ARMS)})")
    c = load_config(str(HERE / ("supervised_baseline.py" if arm == "supervised" else "demo.py")))
    if arm == "no_modality_masking":
        c.ssl.modality_masked = 0
    if arm != "supervised":
        c.data.labeled_fraction = -1.0  # SSL batches: the natural mix of kept-labeled and unlabeled subjects
    c.data.phantom.train_subjects, c.data.phantom.val_subjects, c.data.phantom.test_subjects = s["subjects"]
    c.data.phantom.labeled_fraction = 1.0
    c.data.phantom.resolution = s["resolution"]
    c.model.embed_dim, c.model.depth, c.model.num_heads = s["embed_dim"], s["depth"], s["heads"]
    c.model.head_hidden_dim, c.model.head_bottleneck_dim = s["head_hidden"], s["head_bottleneck"]
    c.data.batch_size = s["batch"]
    c.data.global_crops_size, c.data.local_crops_size, c.data.eval_size = (
        s["global_size"], s["local_size"], s["eval_size"])
    if arm != "supervised":
        c.data.local_crops_number = s["local_crops"]
    steps = s["steps"]
    c.total_steps = c.checkpoint_every = steps
    c.log_every = max(1, steps // 10)
    c.optim.warmup_steps = max(1, steps // 8)
    c.optim.freeze_last_layer_steps = min(c.optim.freeze_last_layer_steps, steps // 10)
    c.ssl.warmup_teacher_temp_steps = max(1, min(c.ssl.warmup_teacher_temp_steps, steps // 3))
    c.eval.bootstrap, c.eval.c_grid_size = s["bootstrap"], s["c_grid"]
    c.eval.batch_size = 32
    c.eval.protocols, c.eval.compare_init = "", False
    return c
