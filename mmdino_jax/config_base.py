"""The fields every training config has, with MM-DINOv2's values (MM-DINOv2
`dinov2/configs/train/glioma_vitb14_mm-dino_v2.yaml` over `dinov2/configs/ssl_default_config.yaml`).

Config files in configs/ start from `base_config()` and change what their experiment needs.
Durations are in optimizer steps; `epochs_to_steps` converts the paper's epochs.
"""

from __future__ import annotations

import ml_collections

# MM-DINOv2's OFFICIAL_EPOCH_LENGTH: ~2661 training subjects / batch 64.
PAPER_EPOCH_STEPS = 42


def epochs_to_steps(epochs: float, epoch_steps: int = PAPER_EPOCH_STEPS) -> int:
    return int(round(epochs * epoch_steps))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = epochs_to_steps(200)
    c.log_every = 10
    c.checkpoint_every = epochs_to_steps(10)
    c.keep_checkpoints = 3
    c.eval_every = 210  # steps between validation probes (0: only at the end)

    c.mesh = ml_collections.ConfigDict({"fsdp": 1})

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vitb14"          # vits14 | vitb14 | vitl14 | vitg14
    c.model.init_from = ""           # a converted model directory (python -m weights_conversion), "" = random init
    c.model.embed_dim = 0            # 0 = the preset's value; set to build a smaller ViT (demo)
    c.model.depth = 0
    c.model.num_heads = 0
    c.model.num_registers = 0
    c.model.drop_path_rate = 0.3     # student only; the teacher runs without stochastic depth
    c.model.layerscale_init = 1e-5
    c.model.use_seq_embed = True
    c.model.dtype = "auto"           # compute dtype: float32 | bfloat16 | auto (bfloat16 on GPU/TPU, float32
                                     # on CPU: models/build.py compute_dtype); parameters stay float32
    c.model.head_n_prototypes = 3
    c.model.head_hidden_dim = 2048
    c.model.head_bottleneck_dim = 256
    c.model.head_nlayers = 3

    c.data = ml_collections.ConfigDict()
    c.data.root = ""                 # NIfTI cohort root; "" = generate the synthetic cohort (data.phantom)
    c.data.layout = "mmdino"
    c.data.labels_csv = ""
    c.data.label_column = ""
    c.data.cache = ""                # prepared cache; "" = <workdir>/cache
    c.data.sequences = "t2,t1,t1c,flair"
    c.data.batch_size = 64           # global batch (all devices, all processes)
    c.data.labeled_fraction = -1.0   # labeled share of each batch; < 0: as in the cohort
    c.data.label_keep_fraction = 1.0 # keep this stratified share of the labels (low-label runs)
    c.data.workers = 0
    c.data.augment_on = "auto"       # where the multi-crop runs: host (Grain workers) | device (in the step,
                                     # training/device_crops.py) | auto (device on GPU/TPU, host on CPU)
    c.data.min_tumour_voxels = 500
    c.data.spacing = 1.0             # mm per pixel of the cached 96 px crops (the paper's 1 mm SRI space)
    c.data.global_crops_size = 98
    c.data.global_crops_scale = (0.5, 1.0)
    c.data.local_crops_number = 8
    c.data.local_crops_size = 56
    c.data.local_crops_scale = (0.2, 0.5)
    c.data.eval_size = 224
    c.data.phantom = ml_collections.ConfigDict({
        "train_subjects": 200, "val_subjects": 60, "test_subjects": 60,
        "labeled_fraction": 0.5, "missing_rate": 0.1, "resolution": 2.0})

    c.ssl = ml_collections.ConfigDict()
    c.ssl.student_temp = 0.1
    c.ssl.teacher_temp = 0.07
    c.ssl.warmup_teacher_temp = 0.04
    c.ssl.warmup_teacher_temp_steps = epochs_to_steps(30)
    c.ssl.momentum_teacher = 0.992
    c.ssl.final_momentum_teacher = 1.0
    c.ssl.centering = "centering"    # centering | sinkhorn_knopp
    c.ssl.center_momentum = 0.9
    c.ssl.dino_loss_weight = 1.0
    c.ssl.ibot_loss_weight = 1.0
    c.ssl.koleo_loss_weight = 0.1
    c.ssl.koleo_warmup_steps = 0     # ramp KoLeo's weight from 0 over these updates (0 = the paper's constant)
    c.ssl.semi_loss_weight = 0.5
    c.ssl.semi_label_smoothing = 0.1
    c.ssl.semi_temperature = 0.1
    c.ssl.semi_class_weights = "batch"   # batch (the reference) | dataset | none
    c.ssl.mask_sample_probability = 0.5
    c.ssl.mask_ratio_min_max = (0.1, 0.5)
    c.ssl.modality_masked = 1        # whole sequences masked per global crop; 0 = plain DINOv2 masking

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 1e-4           # scaled by sqrt(global_batch / 1024)
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = epochs_to_steps(20)
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.layerwise_decay = 0.9
    c.optim.patch_embed_lr_mult = 0.2
    c.optim.clip_grad = 3.0
    c.optim.freeze_last_layer_steps = epochs_to_steps(1)
    c.optim.freeze_backbone_steps = epochs_to_steps(10)
    c.optim.grad_accum_steps = 1

    c.eval = ml_collections.ConfigDict()
    c.eval.c_grid_size = 45          # C = 10**linspace(-6, 5, c_grid_size)
    c.eval.batch_size = 64
    c.eval.bootstrap = 1000
    c.eval.at_end = True             # evaluate the final (or best) teacher when training ends
    c.eval.compare_init = False      # also probe the backbone the run started from (paired MCC difference)
    # Protocols beside the linear probe (mmdino_jax/eval/protocols.py): knn,fewshot,subject,segmentation; "" = none
    c.eval.protocols = "knn,fewshot,subject,segmentation"
    c.eval.knn_k = (10, 20)
    c.eval.knn_temperature = 0.07    # DINO's weighted-vote temperature
    c.eval.fewshot_shots = (1, 2, 4, 8, 16)
    c.eval.fewshot_draws = 10
    c.eval.fewshot_c = 1.0           # fixed C: a few shots leave nothing to hold out for choosing it
    c.eval.subject_slices = 3        # subject level: the K largest tumour slices of each axis
    c.eval.segmentation = ml_collections.ConfigDict({
        "tokens": "concat",          # concat (sequences' tokens per position) | per_sequence (shared map, mean)
        "loss": "ce",                # ce (inverse-frequency weighted) | dice_ce
        "steps": 300, "batch_size": 32, "lr": 1e-3, "examples": 4})
    return c


def config_module(path: str):
    """The config file at `path` as a module (its get_config and whatever else it defines)."""
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("_mmdino_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"config file {path} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`configs/x.py[:arg]` -> that file's get_config(arg), as `--config` would load it."""
    path, _, arg = spec.partition(":")
    return config_module(path).get_config(arg or None)
