"""Inversion: rebuild text from a sentence vector (Selector -> unit index -> Placer, beam decoding)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

_CONTROLLERS: dict[tuple[str, str], Any] = {}


def load_run(path, em=None, runtime: str = "torch", extra_units: bool = True, **decode_overrides):
    """A controller run folder -> :class:`~invemb.inversion.controller.Controller` (kind "controller");
    ``runtime`` is the EM's backbone runtime ("torch", "onnx" or "bf16"); ``extra_units``: take the words
    ``invemb index words`` added to the run (:mod:`invemb.inversion.extra`), when it has them."""
    from invemb.inversion.controller import Controller

    return Controller.load(path, em=em, runtime=runtime, extra_units=extra_units, **decode_overrides)


def invert(vector_or_text, em, controller, **decode_overrides) -> dict:
    """Invert one text (encoded first) or one vector (D,); returns reconstruction, cosine, steps,
    encoder_calls, seconds (and text for a text)."""
    key = (str(controller), str(em))
    if key not in _CONTROLLERS:
        _CONTROLLERS[key] = load_run(Path(controller), em=em)
    ctrl = _CONTROLLERS[key]
    decode = ctrl.decode_cfg.replace(**decode_overrides) if decode_overrides else None
    if isinstance(vector_or_text, str):
        return ctrl.invert_texts([vector_or_text], decode)[0]
    return ctrl.invert_vector(vector_or_text, decode).to_dict()
