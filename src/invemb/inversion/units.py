"""Unit vectors (the encoder's vector of every vocabulary unit), encoded once and cached, and the
identity checks that tie a controller to its encoder and vocabulary."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from invemb.encoder import Encoder, check_vectors, has_content
from invemb.text.vocab import Vocab

# Fixed probe texts: their vectors fingerprint an encoder (same weights -> same vectors).
PROBE_TEXTS = ["the", "bank", "river bank", "New York", "1,234", "The cat sat on the mat."]


def encoder_fingerprint(encoder: Encoder) -> str:
    """Hash of the encoder's vectors for a few probe texts, rounded so float noise does not matter."""
    vecs = check_vectors(encoder.encode(PROBE_TEXTS), len(PROBE_TEXTS), encoder.dim, "encoder", "fingerprint")
    rounded = torch.round(vecs.float() * 100).to(torch.int32)
    return hashlib.sha256(rounded.numpy().tobytes() + str(encoder.dim).encode()).hexdigest()[:16]


def same_encoder(encoder: Encoder, units: list[str], unit_vectors: torch.Tensor, n: int = 16,
                 min_cosine: float = 0.999) -> bool:
    """Whether ``encoder`` gives ``unit_vectors`` (V, D) for ``units``, on n units spread over the
    vocabulary, each to a cosine of at least ``min_cosine``. The fingerprint is a hash of rounded
    vectors, so float noise at a rounding edge (another runtime, another device) changes it; this
    compares values instead. The default EM's units in bfloat16 (runtime "bf16") keep a cosine of
    0.99997 at worst (entries move up to 2e-3); another EM of the same backbone gives 0.45-0.84."""
    if encoder.dim != unit_vectors.shape[1]:
        return False
    picks = [i for i in range(0, len(units), max(1, len(units) // n)) if has_content(units[i])][:n]
    vecs = F.normalize(encoder.encode([units[i] for i in picks]).float(), dim=1)
    return bool((vecs * F.normalize(unit_vectors[picks].float(), dim=1)).sum(1).min() >= min_cosine)


def trained_on(encoder: Encoder, run: Path, info: dict, units: list[str] | None = None,
               unit_vectors: torch.Tensor | None = None) -> bool:
    """Whether the controller run ``run`` (``info``: its config.json) was trained on ``encoder``: the
    same fingerprint, else its unit vectors reproduced (:func:`same_encoder`). ``units`` and
    ``unit_vectors``: the run's, when the caller has them loaded already."""
    if encoder_fingerprint(encoder) == info["encoder_fingerprint"]:
        return True
    if unit_vectors is None:
        from safetensors.torch import load_file

        vocab, vectors = Path(run) / "vocab.json", Path(run) / "unit_vectors.safetensors"
        if not (vocab.exists() and vectors.exists()):
            return False
        units, unit_vectors = Vocab.load(vocab).units, load_file(str(vectors))["units"]
    return same_encoder(encoder, units, unit_vectors)


def encode_units(encoder: Encoder, vocab: Vocab, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(V, D) float32 vectors of every unit, in vocabulary order, with a progress bar."""
    units = vocab.units
    out = torch.empty(len(units), encoder.dim)
    starts = range(0, len(units), batch_size * 8)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="unit vectors", unit="chunk", dynamic_ncols=True, mininterval=1.0)
    for i in starts:
        chunk = units[i:i + batch_size * 8]
        out[i:i + len(chunk)] = check_vectors(encoder.encode(chunk, batch_size=batch_size), len(chunk), encoder.dim,
                                              "encoder", "unit vectors").float()
    return out


def cached_unit_vectors(encoder: Encoder, vocab: Vocab, path: str | Path, encoder_id: str,
                        progress: bool = True, reuse: str | Path | None = None) -> torch.Tensor:
    """Load ``path`` (safetensors) when it was written for this encoder and vocabulary, else the
    file ``reuse`` when it was (read only: an EM run's own unit vectors), else encode every unit and
    save them at ``path`` atomically."""
    from safetensors.torch import load_file, safe_open, save_file

    from invemb.io import atomic_save_file

    path = Path(path)
    want = {"encoder": encoder_id, "vocab": vocab.fingerprint()}
    for candidate in (path, reuse):
        if candidate is None or not Path(candidate).exists():
            continue
        with safe_open(str(candidate), "pt") as f:
            meta = f.metadata() or {}
        if {k: meta.get(k) for k in want} == want:
            vecs = load_file(str(candidate))["units"]
            if vecs.shape == (len(vocab), encoder.dim):
                return vecs
    vecs = encode_units(encoder, vocab, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_file(path, lambda p: save_file({"units": vecs.contiguous()}, p, metadata=want))
    return vecs
