"""Reading and writing flat state dicts (name -> numpy array): .pth/.pt (torch), .safetensors, .npz, HF dirs."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

_CONTAINERS = ("model", "state_dict", "module")


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading or writing .pth/.pt files needs PyTorch (pip install -e '.[dev]'), "
            "or use a .safetensors / .npz file instead"
        ) from e
    return torch


def _to_numpy(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.astype(np.float32) if v.dtype in (np.float16,) else v
    torch = _torch()
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        return v.numpy()
    return v


def _is_array(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return True
    return type(v).__module__.startswith("torch") and hasattr(v, "shape")


def _flatten_tensors(obj: Any, branch: str) -> dict[str, Any]:
    """Descend through checkpoint containers ({"model": ...}, {"teacher": ...}) to the flat tensor dict."""
    path = []
    while isinstance(obj, dict) and not any(_is_array(v) for v in obj.values()):
        for k in (branch, *_CONTAINERS):
            if isinstance(obj.get(k), dict):
                obj, path = obj[k], path + [k]
                break
        else:
            raise ValueError(f"no tensors found under {'/'.join(path) or 'the top level'}; keys: {sorted(obj)[:12]}")
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if _is_array(v)}


def read_state_dict(src: str | Path, branch: str = "teacher") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Flat float32 state dict from a checkpoint file or HF model directory, plus any HF `config.json`."""
    src = Path(src)
    hf_config: dict[str, Any] = {}
    if src.is_dir():
        if (src / "config.json").is_file():
            try:
                hf_config = json.loads((src / "config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{src / 'config.json'} is not valid JSON ({e}); fix it or re-download the "
                                 "model directory") from None
            if not isinstance(hf_config, dict):
                raise ValueError(f"{src / 'config.json'} is not a JSON object; fix it or re-download it")
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src / name).is_file():
                src = src / name
                break
        else:
            raise FileNotFoundError(f"{src}: no model.safetensors or pytorch_model.bin in this directory")
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found")
    try:
        sd = _load(src)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{src}: refused: loading it would need arbitrary unpickling (code execution), not just tensors "
            f"({_first_line(e)}); re-save it as a plain state dict or .safetensors from a trusted environment"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, SafetensorError) as e:
        raise ValueError(f"{src}: unreadable checkpoint (truncated or corrupt?): {_first_line(e)}") from None
    sd = {k: _to_numpy(v) for k, v in _flatten_tensors(sd, branch).items()}
    check_finite(sd, src)
    return sd, hf_config


def check_finite(sd: dict[str, np.ndarray], src) -> None:
    """ValueError naming the float tensors of ``sd`` that hold NaN or inf (a broken or diverged checkpoint)."""
    bad = {k: int(np.count_nonzero(~np.isfinite(v))) for k, v in sd.items()
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()}
    if bad:
        names = ", ".join(f"{k} ({n} values)" for k, n in list(bad.items())[:5])
        raise ValueError(f"{src}: {len(bad)} tensor(s) hold NaN or inf: {names}; the weights are broken "
                         "(a diverged run?): convert an earlier checkpoint")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _load(src: Path) -> dict:
    """Tensors only: `torch.load(weights_only=True)` refuses pickled code; npz without pickle."""
    suffix = src.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(src))
        except TypeError:  # bfloat16 has no numpy dtype; read through torch
            from safetensors.torch import load_file as load_torch

            return load_torch(str(src))
    if suffix == ".npz":
        with np.load(src, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _torch().load(src, map_location="cpu", weights_only=True)
    raise ValueError(f"{src}: unknown checkpoint type {suffix!r} (use .pth, .pt, .bin, .safetensors or .npz)")


def write_state_dict(dst: str | Path, sd: dict[str, np.ndarray]) -> Path:
    """Write a flat state dict as .pth/.pt (torch), .safetensors or .npz, by the file's suffix."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    suffix = dst.suffix.lower()
    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    if suffix in (".pth", ".pt"):
        torch = _torch()
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, dst)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(dst))
    elif suffix == ".npz":
        np.savez(dst, **arrays)
    else:
        raise ValueError(f"{dst}: unknown output type {suffix!r} (use .pth, .pt, .safetensors or .npz)")
    return dst

