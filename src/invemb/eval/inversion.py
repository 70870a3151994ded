"""Inversion quality, measured by the inversion package's own metrics (never reimplemented here).

The hook: ``invemb.inversion.metrics.evaluate_inversion(encoder, controller, sentences) ->
dict[str, float]`` (BLEU, ROUGE-L, token F1, exact match, cosine, as that package defines them).
Without a controller run this evaluator is "not run"; so it is for each encoder the controller was
not trained on (a suite comparing the backbone with an EM runs the controller on its own EM only).
"""
from __future__ import annotations

import importlib

from invemb.eval.base import MemoEncoder, NotRun


class InversionEvaluator:
    primary_metric = "bleu"

    def __init__(self, controller: str | None = None, sentences: list[str] | None = None, loader=None,
                 name: str = "inversion"):
        self.controller, self._sentences, self.loader, self.name = controller, sentences, loader, name

    def _hook(self):
        try:
            metrics = importlib.import_module("invemb.inversion.metrics")
        except ImportError as err:
            raise NotRun("invemb.inversion provides no metrics yet (invemb.inversion.metrics)") from err
        if not hasattr(metrics, "evaluate_inversion"):
            raise NotRun("invemb.inversion.metrics has no evaluate_inversion(encoder, controller, sentences)")
        if not self.controller:
            raise NotRun("no controller run given (invemb eval --controller RUN)")
        return metrics.evaluate_inversion

    def __call__(self, encoder) -> dict[str, float]:
        evaluate = self._hook()
        if isinstance(encoder, MemoEncoder):  # the controller loads against the model itself
            encoder = encoder.encoder
        self._check_trained_on(encoder)
        sentences = self._sentences if self._sentences is not None else self.loader()
        return {k: float(v) for k, v in evaluate(encoder, self.controller, sentences).items()}

    def _check_trained_on(self, encoder) -> None:
        """NotRun (not an error) for an encoder the controller was not trained on."""
        import json
        from pathlib import Path

        from invemb.em.order_bind import OrderBoundEncoder
        from invemb.inversion.units import trained_on

        if isinstance(encoder, OrderBoundEncoder):  # its vectors are inverted by a controller of its EM
            encoder = encoder.em
        config = Path(self.controller) / "config.json"
        if not config.exists():
            return  # the controller's own loader says what is wrong with the folder
        info = json.loads(config.read_text())
        if info.get("encoder_fingerprint") is not None and not trained_on(encoder, Path(self.controller), info):
            raise NotRun(f"the controller {self.controller} was trained on another encoder ({info.get('em', '?')})")
