"""Cheap learning signals of one train step (logged with the losses) and the run-health check on them.

- ``semi_acc``: accuracy of the student head's class logits on the labeled samples of the batch (global
  crops); NaN when the batch has none.
- ``teacher_entropy``: mean entropy (nats) of the teacher's CLS targets; ``log K`` = uniform targets.
- ``teacher_usage``: fraction of the K prototypes that are the argmax of at least one teacher target;
  ``1 / K`` = every sample assigned to one prototype.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from mmdino_jax.constants import UNLABELED


def labeled_accuracy(logits, labels):
    """Mean over crop chunks of the argmax accuracy on labeled samples: logits (C,B,K), labels (B,)."""
    labeled = labels != UNLABELED
    correct = (jnp.argmax(logits, axis=-1) == labels[None]) & labeled[None]
    return jnp.sum(correct) / (logits.shape[0] * jnp.sum(labeled))


def teacher_signals(probs) -> dict:
    """``teacher_entropy`` and ``teacher_usage`` of teacher targets (..., K)."""
    probs = probs.reshape(-1, probs.shape[-1])
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)), axis=-1)
    assigned = jnp.argmax(probs, axis=-1)[:, None] == jnp.arange(probs.shape[-1])[None]
    return {"teacher_entropy": jnp.mean(entropy), "teacher_usage": jnp.mean(jnp.any(assigned, axis=0))}


def progress_fields(values: dict) -> dict[str, str]:
    """The progress bar's postfix: loss, KoLeo term, semi-supervised accuracy, teacher entropy, samples/s."""
    return {"loss": f"{values['loss']:.4f}", "koleo": f"{values['koleo']:.3f}",
            "semi_acc": f"{values['semi_acc']:.2f}", "H_teacher": f"{values['teacher_entropy']:.3f}",
            "sps": f"{values['samples_per_s']:.1f}"}


class HealthCheck:
    """Watches the logged records of a run and says when it is collapsing or stuck.

    ``update(record) -> [warning, ...]`` at each log step; each condition warns once when it has held for
    ``patience`` consecutive log steps (after the first ``grace`` steps, while targets sharpen):
    collapse onto one prototype (``teacher_usage`` at 1/K), uniform teacher targets (entropy >= 0.98 log K),
    a loss that moved by less than ``flat`` (relative) over the window.
    """

    def __init__(self, n_prototypes: int, patience: int = 3, grace: int = 0, flat: float = 1e-3):
        self.k, self.patience, self.grace, self.flat = n_prototypes, patience, grace, flat
        self.records: list[dict] = []
        self.warned: set[str] = set()

    def conditions(self, window: list[dict]) -> dict[str, bool]:
        losses = [r["loss"] for r in window]
        return {
            "collapse": all(r["teacher_usage"] * self.k <= 1.0 + 1e-6 for r in window),
            "uniform": all(r["teacher_entropy"] >= 0.98 * math.log(self.k) for r in window),
            "stuck": max(losses) - min(losses) <= self.flat * max(abs(losses[0]), 1e-8),
        }

    def update(self, record: dict) -> list[str]:
        if record["step"] <= self.grace or "teacher_usage" not in record:
            return []
        self.records.append(record)
        window = self.records[-self.patience:]
        if len(window) < self.patience:
            return []
        span = f"steps {window[0]['step']}-{window[-1]['step']}"
        messages = {
            "collapse": f"teacher collapsing: every sample's target is one prototype ({span}); "
                        "raise ssl.center_momentum or lower optim.base_lr",
            "uniform": f"teacher targets uniform (entropy {window[-1]['teacher_entropy']:.3f} of "
                       f"log K = {math.log(self.k):.3f}, {span}): the DINO and iBOT terms teach nothing; "
                       "lower ssl.teacher_temp or check the data",
            "stuck": f"loss flat at {window[-1]['loss']:.4f} ({span}): the run is stuck; raise optim.base_lr "
                     "or check that the student is updated (optim.freeze_backbone_steps)",
        }
        fired = [name for name, held in self.conditions(window).items() if held and name not in self.warned]
        self.warned.update(fired)
        return [messages[name] for name in fired]
