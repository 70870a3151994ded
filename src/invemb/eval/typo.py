"""Typo robustness: does a noisy sentence keep its vector, and can it still find its clean self?

For each noise level (share of characters hit by swap / drop / insert / keyboard-neighbour edits,
from :class:`invemb.text.noise.TypoNoise`) and for real misspellings from codespell's dictionary
(:func:`invemb.text.noise.real_misspellings`): mean cos(clean, noisy) and the MRR of noisy
queries against the clean sentences as the corpus. The clean side is encoded once.
"""
from __future__ import annotations

from invemb.eval.base import NotRun, encode_checked, rowwise_cos
from invemb.eval.retrieval import dense_rankings, retrieval_metrics


def level_name(rate: float) -> str:
    """0.05 -> "noise5", 0.025 -> "noise2.5": the suffix of this evaluator's per-level metrics (the
    percentage, so two rates never share a name)."""
    return f"noise{round(rate * 100, 6):g}"


def check_typo_rates(rates, name: str = "typo rates") -> None:
    """Refuse noise rates that are not distinct shares of characters in (0, 1] (at least one)."""
    rates = list(rates)
    if not rates or len({level_name(r) for r in rates}) < len(rates) or not all(0 < r <= 1 for r in rates):
        raise ValueError(f"{name} must be distinct shares of characters in (0, 1] (distinct to 1e-8), at least one; "
                         f"got {rates}")


def _noise_module():
    try:
        from invemb.text import noise
    except ImportError as err:
        raise NotRun("the typo generator invemb.text.noise is not installed in this checkout") from err
    return noise


class TypoEvaluator:
    """``primary_metric``: MRR of noisy queries at the 10% level (or the middle level given)."""

    def __init__(self, sentences: list[str] | None = None, loader=None, rates: tuple[float, ...] = (0.05, 0.1, 0.2),
                 real_rate: float = 0.5, seed: int = 0, batch_size: int = 64, name: str = "typo"):
        if sentences is None and loader is None:
            raise ValueError("TypoEvaluator needs sentences or a loader")
        check_typo_rates(rates)
        self._sentences, self.loader, self.rates, self.real_rate = sentences, loader, tuple(rates), real_rate
        self.seed, self.batch_size, self.name = seed, batch_size, name
        middle = 0.1 if 0.1 in self.rates else sorted(self.rates)[len(self.rates) // 2]  # not the order given
        self.primary_metric = f"mrr_{level_name(middle)}"
        self._variants: dict[str, list[str]] | None = None
        self.real_changed_share = 0.0

    @property
    def sentences(self) -> list[str]:
        if self._sentences is None:
            self._sentences = self.loader()
        return self._sentences

    @property
    def variants(self) -> dict[str, list[str]]:
        """Noisy copies of the sentences per level name (and ``"real"``), built once."""
        if self._variants is None:
            noise = _noise_module()
            variants = {}
            for rate in self.rates:
                typo = noise.TypoNoise(rate=rate, seed=self.seed)
                variants[level_name(rate)] = [typo(s) for s in self.sentences]
            try:
                table = noise.load_codespell_table()
            except FileNotFoundError as err:  # codespell's dictionary missing: the synthetic levels still run
                import warnings

                warnings.warn(f"{self.name}: the real-misspelling level is not run ({err})")
                table = None
            if table is not None:
                real = [noise.real_misspellings(s, table, self.real_rate, self.seed) for s in self.sentences]
                self.real_changed_share = sum(a != b for a, b in zip(real, self.sentences)) / len(real)
                variants["real"] = real
            self._variants = variants
        return self._variants

    def __call__(self, encoder) -> dict[str, float]:
        if len(self.sentences) < 2:
            raise ValueError(f"{self.name}: need at least 2 sentences")
        clean = encode_checked(encoder, self.sentences, task=f"{self.name} (clean)", batch_size=self.batch_size)
        relevant = [{i} for i in range(len(clean))]
        out = {}
        for level, texts in self.variants.items():
            noisy = encode_checked(encoder, [t if t.strip() else s for t, s in zip(texts, self.sentences)],
                                   task=f"{self.name} ({level})", batch_size=self.batch_size)
            out[f"cos_{level}"] = float(rowwise_cos(clean, noisy).mean())
            out[f"mrr_{level}"] = retrieval_metrics(dense_rankings(noisy, clean, 10), relevant, ks=(1,))["mrr"]
        if "real" in self.variants:
            out["real_changed_share"] = float(self.real_changed_share)
        return out | {"n_sentences": float(len(self.sentences))}
