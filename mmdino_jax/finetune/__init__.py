"""Fine-tuning a backbone end to end or with LoRA adapters: `python -m mmdino_jax.finetune` (see __main__)."""
