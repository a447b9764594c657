"""Orbax checkpoints of a training run: train state, Grain iterator state and run metadata.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta,SHA256SUMS}`. The newest `keep` checkpoints are
kept, plus the one with the best validation MCC (saved with `metrics={"val_mcc": ...}`).

Each finished step gets a sha256 manifest (`checksums`). Before a step is read it is checked: a corrupt or
truncated step is skipped with a warning naming the file (resume moves it to `<workdir>/checkpoints.corrupt/`),
and the newest intact one is used. A checkpoint made with another model config is refused by name.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import grain
import jax
import jax.experimental.multihost_utils
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mmdino_jax import checksums
from mmdino_jax.cli_errors import CorruptFileError, WorkdirError

BEST_METRIC = "val_mcc"
# config.model fields that fix the shapes of the saved state; the others (dtype, drop path) may change on resume.
SHAPE_FIELDS = ("arch", "embed_dim", "depth", "num_heads", "num_registers", "use_seq_embed",
                "head_n_prototypes", "head_hidden_dim", "head_bottleneck_dim", "head_nlayers")
log = logging.getLogger(__name__)


def run_path(workdir: str) -> epath.Path:
    """The run directory as Orbax needs it: absolute for local paths; gs:// and other URLs as given."""
    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


def _best_metric(metrics) -> float:
    return float(metrics[BEST_METRIC])


class RunCheckpoints:
    """Save / restore a run's state, data-iterator position and metadata."""

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = run_path(workdir)
        self._unsealed: list[int] = []
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        self.manager = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True),
            item_names=("state", "data", "meta"),
            item_handlers={"data": grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest saved validation MCC, or None if none was evaluated."""
        scored = [(s, self.manager.metrics(s)) for s in self.manager.all_steps()]
        scored = [(s, m[BEST_METRIC]) for s, m in scored if m and BEST_METRIC in m]
        return max(scored, key=lambda t: (t[1], t[0]))[0] if scored else None

    def step_dir(self, step: int) -> epath.Path:
        return self.manager.directory / str(step)

    def save(self, step: int, state, data_iterator, meta: dict, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Save (asynchronously); the step's manifest is written once it is finished (next save, or wait)."""
        self._seal()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        saved = self.manager.save(step, args=args, metrics=metrics, force=force)
        if saved:
            self._unsealed.append(step)
        return saved

    def _seal(self) -> None:
        """Write the manifests of finished saves (process 0; all processes' files are committed by then)."""
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                if self.step_dir(step).exists():  # not already removed by the preservation policy
                    checksums.write_manifest(self.step_dir(step))
        self._unsealed = []

    def problems(self, step: int) -> list[str] | None:
        """Checksum problems of a step ([] intact), or None when it has no manifest (saved before manifests,
        or interrupted between finishing and sealing)."""
        root = self.step_dir(step)
        if not checksums.has_manifest(root):
            return None
        return checksums.manifest_problems(root)

    def saved_config(self, step: int) -> dict:
        """The run config stored with a step (its `meta`), {} if it has none."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {}).get("config") or {}

    def check_same_model(self, step: int, config) -> None:
        """WorkdirError when the step was made with other model shapes than ``config.model``."""
        saved = self.saved_config(step).get("model", {})
        for name in SHAPE_FIELDS:
            if name in saved and name in config.model and saved[name] != config.model[name]:
                raise WorkdirError(
                    f"checkpoint step {step} in {self.manager.directory} was made with model.{name} {saved[name]!r}, "
                    f"this config has {config.model[name]!r}: use a new --workdir or the same config")

    def check_resumable(self, config) -> None:
        """Before any work: WorkdirError if the newest checkpoint was made with another model config."""
        step = self.latest_step()
        if step is not None and self.problems(step) == []:  # a corrupt one is reported (and skipped) on resume
            self.check_same_model(step, config)

    def usable_step(self, prefer_best: bool = False) -> int | None:
        """The newest intact step (with ``prefer_best``, the best-scored one if intact); None if there is none.
        Corrupt steps are skipped with a warning naming what is wrong."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        best = self.best_step() if prefer_best else None
        for step in ([best] if best is not None else []) + [s for s in steps if s != best]:
            problems = self.problems(step)
            if not problems:
                return step
            log.warning("checkpoint step %d in %s is unusable (%s): skipped", step, self.manager.directory,
                        "; ".join(problems[:3]))
        return None

    def restore_latest(self, abstract_state, data_iterator, config=None):
        """Resume: (step, state) of the newest intact checkpoint, (0, None) if there is none.

        A step whose files do not match its manifest, or without a manifest cannot be read, is skipped with a
        warning and moved to ``<workdir>/checkpoints.corrupt/`` (so that training can save that step again).
        A step that is intact but made with other model shapes (than ``config.model``, when given) or that does
        not fit ``abstract_state`` is refused (WorkdirError).
        """
        bad: dict[int, str] = {}
        found, state = 0, None
        for step in sorted(self.manager.all_steps(), reverse=True):
            problems = self.problems(step)
            if problems:
                bad[step] = "; ".join(problems[:3])
                continue
            try:
                if config is not None:
                    self.check_same_model(step, config)
                state, _ = self.restore(step, abstract_state, data_iterator)
            except WorkdirError:
                raise
            except Exception as err:  # noqa: BLE001 - TensorStore / Orbax raise many types for bad files
                if problems is not None:  # intact files that do not fit: not corruption
                    raise WorkdirError(f"checkpoint step {step} in {self.manager.directory} does not fit this "
                                       f"config ({type(err).__name__}): use a new --workdir or the same config"
                                       ) from err
                bad[step] = f"{type(err).__name__} while reading it, and it has no {checksums.MANIFEST}"
                continue
            found = step
            break
        self._quarantine(bad, found)
        return found, state

    def _quarantine(self, bad: dict[int, str], resumed: int) -> None:
        """Warn about and (process 0) move the unusable steps out of the manager's directory."""
        if not bad:
            return
        for step, why in sorted(bad.items()):
            dest = self.workdir / "checkpoints.corrupt" / str(step)
            log.warning("checkpoint step %d in %s is unusable (%s): moved to %s; %s", step, self.manager.directory,
                        why, dest, f"resuming from step {resumed}" if resumed else "starting from scratch")
            if jax.process_index() == 0:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    dest.rmtree()
                self.step_dir(step).rename(dest)
        if jax.process_count() > 1:
            jax.experimental.multihost_utils.sync_global_devices("checkpoints quarantined")
        self.manager.reload()

    def checked(self, step: int) -> int:
        """``step`` if its files match their manifest, else CorruptFileError (for an explicitly chosen step)."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint step {step} in {self.manager.directory}; "
                                    f"it has {sorted(self.manager.all_steps())}")
        problems = self.problems(step)
        if problems:
            raise CorruptFileError(f"checkpoint step {step} in {self.manager.directory}: {'; '.join(problems[:3])}")
        return step

    def restore(self, step: int, abstract_state, data_iterator):
        """Restore into the shapes/shardings of `abstract_state`; moves `data_iterator` in place."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["meta"]

    def restore_state(self, step: int, abstract_state):
        """Only the train state (for evaluation and export)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["meta"]

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        self._seal()
        self.manager.close()


class StopSignal:
    """Turns SIGTERM (preemption) into a flag the train loop checks at step boundaries."""

    def __init__(self):
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())

    def __bool__(self) -> bool:
        return self.event.is_set()


def abstract(tree):
    """ShapeDtypeStructs with shardings, the restore target for `tree`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
