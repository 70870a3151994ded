"""The one protocol every encoder implements, and the checks shared by all of them."""
from __future__ import annotations

import unicodedata
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into L2-normalised vectors of one width.

    EM runs, scratch and tiered models, a raw backbone and test fakes all implement this, so
    evaluation, indexing and inversion work with any of them.
    """

    dim: int

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:  # (N, dim)
        ...

    def save(self, path) -> None:
        ...


class EncoderOutputError(RuntimeError):
    """An encoder returned vectors of the wrong shape or with NaN/inf."""


def has_content(text: str) -> bool:
    """Whether ``text`` holds a character other than whitespace and control / format characters
    (a zero-width space or a NUL alone would give every encoder only its special tokens)."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in text)


def check_texts(texts: list[str]) -> list[str]:
    """Refuse texts with nothing to encode (empty, whitespace-only, or only control / format
    characters) with one readable line, the same for every encoder (never a NaN vector)."""
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of strings, not one string")
    not_str = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_str:
        raise TypeError(f"encode() takes strings; position {not_str[0]} holds a {type(texts[not_str[0]]).__name__}")
    bad = [i for i, t in enumerate(texts) if not has_content(t)]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"{len(bad)} empty or whitespace-only text(s) (or only control characters) at position(s) {shown}")
    return list(texts)


def check_batch_size(batch_size: int) -> int:
    """Refuse a batch size below 1 (a range() over it would run no batch and return unfilled rows)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    return batch_size


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic natively (else autocast emulates it, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


OWN_RUNTIMES = ("torch", "bf16")


def check_own_runtime(runtime: str, who: str) -> str:
    """``runtime`` if a scratch or tiered run can take it; ``who`` names the run ("a tiered run")."""
    if runtime not in OWN_RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(OWN_RUNTIMES)} for {who} "
                         "(onnx is for EM runs and Hugging Face backbones)")
    return runtime


def use_own_runtime(model: torch.nn.Module, runtime: str, who: str) -> torch.nn.Module:
    """Set the runtime of a model that is all invemb's own (a scratch or tiered run): ``"torch"``
    keeps float32; ``"bf16"`` casts every weight, and so every activation, to bfloat16 for inference
    where the hardware does bfloat16 natively (the tiered default: about 0.70x the time of float32 on
    an AVX512-BF16 CPU, vectors within cosine 1e-4 of float32's; ``bench/tiered_speed.py``)."""
    if check_own_runtime(runtime, who) == "bf16":
        device = next(model.parameters()).device
        if not bf16_is_fast(device):
            raise ValueError(f"runtime 'bf16' would be slower than 'torch' here: {device} has no bfloat16 "
                             "arithmetic (AVX512-BF16 or AMX on CPU); use runtime 'torch'")
        model.to(torch.bfloat16)
    return model


def check_vectors(vectors: torch.Tensor, n: int, dim: int, who: str = "encoder", task: str = "") -> torch.Tensor:
    """Fail loudly (naming the encoder and the task) on a wrong shape or non-finite values."""
    where = f"{who}" + (f" on {task}" if task else "")
    if not isinstance(vectors, torch.Tensor):
        vectors = torch.as_tensor(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] != dim:
        raise EncoderOutputError(f"{where}: expected vectors of shape ({n}, {dim}), got {tuple(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise EncoderOutputError(f"{where}: returned NaN or infinite values")
    return vectors
