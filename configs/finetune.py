"""Fine-tuning a backbone on the labeled subjects of the demo cohort: full fine-tuning or LoRA.

  python -m mmdino_jax.finetune --config configs/finetune.py[:smoke] --workdir DIR \
      --config.finetune.init=runs/demo                 # the demo run's teacher (or a model directory)
  ... --config.finetune.lora_rank=8 [--config.finetune.lora_mlp=True]   # LoRA: only adapters + head train

Same model, data, crops and evaluation view as configs/demo.py (argument `smoke` as there); every batch
holds labeled samples only and every global crop is a training example; the ssl fields are ignored.
"""

from pathlib import Path

import ml_collections

from mmdino_jax.config_base import load_config

DEMO = str(Path(__file__).with_name("demo.py"))


def get_config(arg=None):
    c = load_config(f"{DEMO}:{arg}" if arg else DEMO)
    c.data.labeled_fraction = 1.0
    c.data.local_crops_number = 1    # the pipeline makes >= 1 local crop; fine-tuning ignores it
    c.optim.freeze_backbone_steps = 0
    c.optim.freeze_last_layer_steps = 0
    c.optim.layerwise_decay = 0.75
    c.optim.weight_decay = c.optim.weight_decay_end = 0.05
    c.eval_every = 3 if arg == "smoke" else 20  # validation MCC of the classifier picks the best checkpoint
    c.eval.protocols = ""            # the classifier itself is evaluated, not probes of its frozen features
    c.eval.compare_init = False
    c.finetune = ml_collections.ConfigDict({
        "init": "",                  # model directory | training run directory (its teacher) | "" = random init
        "pooling": "cls",            # cls | cls+mean_patch: the linear head's input
        "label_smoothing": 0.1,
        "sequence_dropout": 0.0,     # probability that a crop loses one of its present sequences
        "lora_rank": 0,              # > 0: freeze the backbone, train rank-r adapters on attention qkv / proj
        "lora_mlp": False,           # LoRA adapters on the FFN's linear layers too
    })
    return c
