"""The functions the README shows first: load, encode, invert."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from invemb.encoder import Encoder, check_own_runtime

# Run folders carry ``"kind"`` in config.json; each kind's package exposes ``load_run(path)``.
RUN_KINDS = {"em": "invemb.em", "order_bind": "invemb.em.order_bind", "scratch": "invemb.scratch", "tiered": "invemb.tiered",
             "controller": "invemb.inversion"}


def run_kind(path: str | Path) -> str | None:
    cfg = Path(path) / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text()).get("kind")
        except json.JSONDecodeError:
            return None
    return None


def load(path: str | Path = "backbone", runtime: str = "torch", **kwargs: Any) -> Encoder:
    """Load any saved run folder (EM, scratch, tiered), a raw HF backbone folder, or
    ``"backbone"`` for the bundled all-MiniLM-L6-v2, as an :class:`Encoder`. ``runtime="onnx"``
    (EM runs and backbones, CPU inference) runs the frozen backbone with onnxruntime, ``"bf16"`` in
    bfloat16 where the hardware has it (:meth:`HFBackbone.use_runtime`; for scratch and tiered runs
    the whole model, :func:`invemb.encoder.use_own_runtime`)."""
    from invemb.backbone.hf import BackboneConfig, HFBackbone

    if str(path) in ("backbone", "default"):
        return HFBackbone(BackboneConfig(**kwargs)).use_runtime(runtime)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run or model folder")
    kind = run_kind(p)
    if kind == "controller":  # not an encoder: it inverts one
        em = json.loads((p / "config.json").read_text()).get("em", "?")
        raise ValueError(f"{p} is a controller run, not an encoder: load its encoder ({em}) instead, and the "
                         "controller with invemb.inversion.load_run")
    if kind in ("em", "order_bind"):  # an order binding's runtime is its EM's
        return importlib.import_module(RUN_KINDS[kind]).load_run(p, runtime=runtime, **kwargs)
    if kind in ("scratch", "tiered"):  # all their own weights: float32 or bfloat16 (use_own_runtime)
        check_own_runtime(runtime, f"a {kind} run ({p})")
        return importlib.import_module(RUN_KINDS[kind]).load_run(p, runtime=runtime, **kwargs)
    if (p / "config.json").exists() and kind is None:
        return HFBackbone(BackboneConfig(path=str(p), **kwargs)).use_runtime(runtime)
    raise ValueError(f"{p}: not an invemb run folder (config.json with a known 'kind') nor a Hugging Face model folder")


_LOADED: dict[str, Encoder] = {}


def encode(texts: list[str] | str, model: str | Path | Encoder = "backbone", batch_size: int = 64) -> torch.Tensor:
    """Vectors (N, dim), L2-normalised, for words, phrases or sentences."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(model, (str, Path)):
        key = str(model)
        if key not in _LOADED:
            _LOADED[key] = load(model)
        model = _LOADED[key]
    return model.encode(list(texts), batch_size=batch_size)


def invert(vector_or_text: Any, em: str | Path, controller: str | Path, **kwargs: Any):
    """Rebuild text from a sentence vector (or from a text, encoded first) with a trained controller."""
    from invemb.inversion import invert as _invert

    return _invert(vector_or_text, em=em, controller=controller, **kwargs)


def _save_npy(path: str | Path, array) -> None:
    """np.save to exactly ``path`` (given a name, np.save would add ".npy" to a temporary file's)."""
    import numpy as np

    with open(path, "wb") as fh:
        np.save(fh, array)


def encode_to_npy(encoder: Encoder, texts: list[str], output: str | Path, settings: dict | None = None,
                  batch_size: int = 64, chunk: int = 2048, progress: bool = False) -> tuple[int, int]:
    """Encode ``texts`` into the (N, dim) float32 ``.npy`` file ``output`` (rows in input order); returns
    its shape. Finished chunks wait in ``output.partial/`` (a :class:`invemb.io.PartialFolder` keyed by
    the texts, the encoder's vectors for a few probe texts and ``settings``: the caller's model name,
    runtime...), so that the same call after a kill encodes only the rest."""
    import numpy as np

    from invemb.encoder import check_batch_size, check_texts, check_vectors
    from invemb.inversion.units import encoder_fingerprint
    from invemb.io import PartialFolder, atomic_save_file, check_output_file, content_key

    texts = check_texts(texts)  # every text and setting checked before any time is spent
    if not texts:
        raise ValueError("no texts to encode")
    check_batch_size(batch_size)
    output = check_output_file(output, ".npy file")
    partial = PartialFolder(output.with_name(output.name + ".partial"),
                            content_key(texts, encoder_fingerprint(encoder), settings or {}, batch_size, chunk))
    parts = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
    names = [f"chunk_{k:06d}.npy" for k in range(len(parts))]
    todo = [k for k, name in enumerate(names) if not partial.has(name)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), initial=len(texts) - sum(len(parts[k]) for k in todo), desc="encode", unit="text",
                   dynamic_ncols=True)
    for k in todo:
        part = parts[k]
        vecs = check_vectors(encoder.encode(part, batch_size=batch_size), len(part), encoder.dim).float().numpy()  # (n, dim)
        atomic_save_file(partial.slot(names[k]), lambda p, v=vecs: _save_npy(p, v))
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    matrix = np.concatenate([np.load(partial.path(name)) for name in names]).astype(np.float32)
    atomic_save_file(output, lambda p: _save_npy(p, matrix))
    partial.discard()
    return matrix.shape
