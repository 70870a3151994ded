"""Checkpoints as safetensors + JSON, written atomically (no pickle anywhere).

A checkpoint is a folder ``checkpoints/step-000123/`` holding ``model.safetensors``,
``state.safetensors`` (optimizer moments and any tensor state of the task, flattened to dotted
keys) and ``state.json`` (every non-tensor leaf: step, epoch, lr, param-group settings). The
folder is written under a temporary name and renamed, and ``checkpoints/latest.json`` is
replaced atomically last, so a run killed at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from invemb.io import atomic_write_json

_TENSOR = "__tensor__"


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts/lists of tensors and scalars) into JSON + named tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(o, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        return o

    return walk(obj, prefix or "s"), tensors


def unflatten_state(meta: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, dict) and _TENSOR in o:
            return tensors[o[_TENSOR]]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(meta)


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    meta, tensors = flatten_state(state)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(ckpt_root / "latest.json", {"step": step, "path": final.name})
    # Keep the newest ``keep`` checkpoints.
    olds = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for p in olds[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["path"]
    return path if path.exists() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    model_state = load_file(str(path / "model.safetensors"))
    tensors = load_file(str(path / "state.safetensors"))
    state = unflatten_state(json.loads((path / "state.json").read_text()), tensors)
    return model_state, state
