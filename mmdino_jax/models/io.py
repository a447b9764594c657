"""Model directories: `model.json` (configs, sequences, provenance) + `state/` (Orbax) for a backbone and head,
and `SHA256SUMS` (`checksums`), checked before the weights are read.

Written by `python -m weights_conversion` and by training exports; read by `model.init_from` and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from mmdino_jax import checksums
from mmdino_jax.cli_errors import CorruptFileError
from mmdino_jax.models.heads import DINOHead
from mmdino_jax.models.vit import DinoViT, ViTConfig

FORMAT = "mmdino_jax.model"
VERSION = 1
_RESERVED = ("format", "version", "config", "head")


def save_model(
    path: str | Path, backbone: DinoViT, head: DINOHead | None = None, meta: dict[str, Any] | None = None
) -> Path:
    """Write `path/model.json` and `path/state/`. `meta` (JSON-serialisable) is stored at the top level of
    model.json, e.g. `sequences` (names the model was trained on) and `provenance` (where it came from)."""
    path = Path(path).absolute()
    meta = dict(meta or {})
    clash = [k for k in meta if k in _RESERVED]
    if clash:
        raise ValueError(f"meta keys {clash} are reserved in model.json")
    if (path / "state").exists():
        raise FileExistsError(f"{path / 'state'} already exists; choose a new model directory or delete it")
    path.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": backbone.cfg.to_dict(),
        "head": None if head is None else head.config(),
        **meta,
    }
    text = json.dumps(doc, indent=2, sort_keys=False)  # fail before writing anything if meta is not JSON
    tree = {"backbone": nnx.state(backbone, nnx.Param).to_pure_dict()}
    if head is not None:
        tree["head"] = nnx.state(head, nnx.Param).to_pure_dict()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "state", tree)
        ckpt.wait_until_finished()
    (path / "model.json").write_text(text + "\n")
    checksums.write_manifest(path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The parsed `model.json` of a model directory, checked for format."""
    file = Path(path) / "model.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: not a model directory (make one with `python -m weights_conversion SRC DST`)"
        )
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-create the model directory") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file} holds a {type(doc).__name__}, not a JSON object; re-create the model directory")
    if doc.get("format") != FORMAT or doc.get("version", 0) > VERSION:
        raise ValueError(f"{file}: unsupported model format {doc.get('format')!r} v{doc.get('version')}")
    return doc


def load_model(path: str | Path) -> tuple[DinoViT, DINOHead | None, dict[str, Any]]:
    """Rebuild the backbone (and head, if saved) from a model directory; `meta` is model.json minus configs."""
    path = Path(path).absolute()
    doc = read_meta(path)
    if not (path / "state").is_dir():
        raise FileNotFoundError(f"{path / 'state'} not found: the model directory lacks its weights")
    if checksums.has_manifest(path) and (problems := checksums.manifest_problems(path)):
        raise CorruptFileError(f"model directory {path} is corrupt: {'; '.join(problems[:3])}")
    cfg = ViTConfig.from_dict(doc["config"])
    head_cfg = doc.get("head")
    abs_backbone = nnx.eval_shape(lambda: DinoViT(cfg))
    target = {"backbone": nnx.state(abs_backbone, nnx.Param).to_pure_dict()}
    if head_cfg is not None:
        abs_head = nnx.eval_shape(lambda: DINOHead(**head_cfg))
        target["head"] = nnx.state(abs_head, nnx.Param).to_pure_dict()
    with ocp.StandardCheckpointer() as ckpt:
        tree = ckpt.restore(path / "state", _with_default_sharding(target))
    backbone = _materialise(abs_backbone, tree["backbone"])
    head = None if head_cfg is None else _materialise(abs_head, tree["head"])
    meta = {k: v for k, v in doc.items() if k not in _RESERVED}
    return backbone, head, meta


def _with_default_sharding(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _materialise(abstract_module, values):
    graphdef, state = nnx.split(abstract_module)
    state.replace_by_pure_dict(values)
    return nnx.merge(graphdef, state)
