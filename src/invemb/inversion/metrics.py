"""Inversion metrics as plain functions (the evaluation suite calls them too).

Token F1 is the multiset overlap of lowercased research-code tokens, per sentence; BLEU is
sacrebleu's corpus BLEU; ROUGE-L is rouge-score's F-measure; all are on a 0-100 scale.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Sequence

from invemb.text.vocab import tokenize

LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 32), (33, 10_000))


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in tokenize(text)]


class _RougeTokens:
    """rouge-score's tokenizer interface over :func:`_tokens`."""

    def tokenize(self, text: str) -> list[str]:
        return _tokens(text)


def token_overlap(prediction: str, reference: str) -> tuple[float, float]:
    """(precision, recall) of the lowercased-token multisets, 0-100; an empty side scores 100 on its
    own measure only when both are empty (nothing said, nothing missed)."""
    p, r = Counter(_tokens(prediction)), Counter(_tokens(reference))
    overlap = sum((p & r).values())
    precision = 100.0 * overlap / sum(p.values()) if p else 100.0 * (not r)
    recall = 100.0 * overlap / sum(r.values()) if r else 100.0 * (not p)
    return precision, recall


def token_f1(prediction: str, reference: str) -> float:
    """Multiset F1 of lowercased tokens, 0-100; two empty texts score 100."""
    return _f1(*token_overlap(prediction, reference))


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def length_ratio(prediction: str, reference: str) -> float | None:
    """Tokens in the prediction over tokens in the reference (None for an empty reference): under 1,
    the decoder stopped early; over 1, it padded."""
    n = len(_tokens(reference))
    return len(_tokens(prediction)) / n if n else None


def exact_match(prediction: str, reference: str) -> float:
    """100 when the token sequences agree (case and spacing aside), else 0."""
    return 100.0 * (_tokens(prediction) == _tokens(reference))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    # rouge-score's own tokenizer keeps [a-z0-9] only: "Córdoba" became two tokens and a Cyrillic
    # sentence none (ROUGE-L 0 for an exact match). The same lowercased tokens as token F1 instead.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_RougeTokens())
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return 100.0 * sum(scores) / max(1, len(scores))


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def summarise(rows: Sequence[dict]) -> dict:
    """Rows with ``text``, ``reconstruction``, ``cosine``, ``encoder_calls``, ``seconds`` -> the metrics."""
    preds, refs = [r["reconstruction"] for r in rows], [r["text"] for r in rows]
    overlaps = [token_overlap(p, r) for p, r in zip(preds, refs)]  # (precision, recall) per row, counted once
    seconds = sum(r["seconds"] for r in rows)
    return {
        "n": len(rows),
        "token_f1": _mean(_f1(*o) for o in overlaps),
        # F1's two halves: which one is low says whether wrong units or missing ones cost the score.
        "token_precision": _mean(o[0] for o in overlaps),
        "token_recall": _mean(o[1] for o in overlaps),
        "length_ratio": _mean(length_ratio(p, r) for p, r in zip(preds, refs)),
        "bleu": bleu(preds, refs) if rows else None,
        "rouge_l": rouge_l(preds, refs) if rows else None,
        "exact_match": _mean(exact_match(p, r) for p, r in zip(preds, refs)),
        "cosine": _mean(r["cosine"] for r in rows),
        "encoder_calls": _mean(r["encoder_calls"] for r in rows),
        "seconds": seconds / max(1, len(rows)),
        "sentences_per_s": len(rows) / seconds if seconds > 0 else None,
    }


def paired_difference(rows: Sequence[dict], reference: Sequence[dict], resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, dict]:
    """How two inversions of the same sentences differ, with paired bootstrap confidence intervals.

    ``rows`` and ``reference`` hold one row per sentence, in the same order (``text`` must agree).
    For token F1, precision and recall the per-sentence differences are resampled (scipy's BCa
    bootstrap of their mean); for BLEU the sentences are resampled in pairs and the corpus BLEU of
    both recomputed. Returns ``{metric: {"value", "reference", "difference", "low", "high"}}``: a
    difference whose interval excludes 0 is more than the sentences' own spread. On 50-150 held-out
    sentences, one retrain of the same controller moves token F1 by about 2 points, so a single pair
    of runs cannot settle a smaller gain either way: compare seeds too.
    """
    import numpy as np
    from scipy.stats import bootstrap

    if len(rows) != len(reference) or any(a["text"] != b["text"] for a, b in zip(rows, reference)):
        raise ValueError("the two sets of rows must invert the same sentences in the same order")
    if len(rows) < 2:
        raise ValueError("a paired comparison needs at least two sentences")
    out: dict[str, dict] = {}
    overlaps = [[token_overlap(r["reconstruction"], r["text"]) for r in side] for side in (rows, reference)]
    per_sentence = {"token_f1": lambda o: _f1(*o), "token_precision": lambda o: o[0], "token_recall": lambda o: o[1]}
    for name, value in per_sentence.items():
        a, b = (np.array([value(o) for o in side]) for side in overlaps)
        diff = a - b
        if np.allclose(diff, diff[0]):  # no spread to resample (e.g. identical reconstructions)
            low = high = float(diff[0])
        else:
            ci = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=confidence, random_state=seed).confidence_interval
            low, high = float(ci.low), float(ci.high)
        out[name] = {"value": float(a.mean()), "reference": float(b.mean()), "difference": float(diff.mean()),
                     "low": low, "high": high}
    preds, base, refs = ([r["reconstruction"] for r in rows], [r["reconstruction"] for r in reference], [r["text"] for r in rows])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(max(1, resamples // 10)):  # corpus BLEU per resample is the slow part
        idx = rng.integers(0, len(rows), len(rows))
        draws.append(bleu([preds[i] for i in idx], [refs[i] for i in idx]) - bleu([base[i] for i in idx], [refs[i] for i in idx]))
    value, ref_value = bleu(preds, refs), bleu(base, refs)
    tail = (1 - confidence) / 2
    out["bleu"] = {"value": value, "reference": ref_value, "difference": value - ref_value,
                   "low": float(np.quantile(draws, tail)), "high": float(np.quantile(draws, 1 - tail))}
    return out


def by_length(rows: Sequence[dict], buckets=LENGTH_BUCKETS) -> dict[str, dict]:
    """:func:`summarise` per reference length bucket (in tokens)."""
    out = {}
    for lo, hi in buckets:
        part = [r for r in rows if lo <= len(tokenize(r["text"])) <= hi]
        if part:
            out[f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"] = summarise(part)
    return out


def placed_units(steps: Sequence[dict]) -> list[str]:
    """The units a decoding inserted, in the order it chose them (a move re-places a unit: left out)."""
    return [s["unit"] for s in steps if "unit" in s and "moved_from" not in s]


def precision_by_step(rows: Sequence[dict], min_rows: int = 5) -> list[dict]:
    """Per insertion step t (1-based), the share (0-100) of the units chosen at step t that the
    reference holds, over the rows' ``placed`` lists (:func:`placed_units`). A unit is right when all
    its lowercased tokens are in the reference and not already claimed by an earlier right unit, so a
    unit chosen twice counts once. Steps that fewer than ``min_rows`` rows reach (all rows, when there
    are fewer) are left out. A flat
    curve means mistakes come from the first step on; a falling one, that they compound."""
    hits: list[int] = []
    reached: list[int] = []
    for r in rows:
        left = Counter(_tokens(r["text"]))
        for t, unit in enumerate(r.get("placed") or []):
            need = Counter(_tokens(unit))
            right = bool(need) and not (need - left)
            if right:
                left -= need
            if t == len(hits):
                hits.append(0)
                reached.append(0)
            hits[t] += right
            reached[t] += 1
    return [{"step": t + 1, "precision": 100.0 * h / n, "rows": n}
            for t, (h, n) in enumerate(zip(hits, reached)) if n >= min(min_rows, len(rows))]


def plot_precision_by_step(by_step: dict[str, Sequence[dict]], path: str | Path, title: str = "") -> Path:
    """Per-step precision (:func:`precision_by_step`), one line per method, with the number of rows
    reaching each step on a second axis (the late steps rest on few sentences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invemb.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    counts = ax.twinx()
    for name, points in by_step.items():
        if not points:
            continue
        xs = [p["step"] for p in points]
        line, = ax.plot(xs, [p["precision"] for p in points], marker="o", markersize=3, label=name)
        counts.plot(xs, [p["rows"] for p in points], color=line.get_color(), alpha=0.3, linestyle=":")
    ax.set_xlabel("insertion step")
    ax.set_ylabel("units in the reference (%)")
    ax.set_ylim(-2, 102)
    counts.set_ylabel("sentences reaching the step (dotted)")
    counts.set_ylim(bottom=0)
    ax.set_title(title or "precision of the unit chosen at each step")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_f1_vs_length(rows_by_method: dict[str, Sequence[dict]], path: str | Path, title: str = "") -> Path:
    """Scatter of per-sentence token F1 against reference length, one colour per method, with the
    per-length mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invemb.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in rows_by_method.items():
        xs = [len(tokenize(r["text"])) for r in rows]
        ys = [token_f1(r["reconstruction"], r["text"]) for r in rows]
        dots = ax.scatter(xs, ys, s=10, alpha=0.35, label=name)
        means = {}
        for x, y in zip(xs, ys):
            means.setdefault(x, []).append(y)
        keys = sorted(means)
        ax.plot(keys, [sum(means[k]) / len(means[k]) for k in keys], color=dots.get_facecolor()[0], alpha=0.9)
    ax.set_xlabel("reference length (tokens)")
    ax.set_ylabel("token F1")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "token F1 against sentence length")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def evaluate_inversion(encoder, controller, sentences: Sequence[str]) -> dict[str, float]:
    """The evaluation suite's hook: invert ``sentences`` encoded by ``encoder`` with the controller
    run ``controller`` (which must have been trained on that encoder) and return the metrics."""
    from invemb.inversion.controller import Controller
    from invemb.inversion.harness import controller_methods, run_methods

    ctrl = controller if isinstance(controller, Controller) else Controller.load(controller, em=encoder)
    res = run_methods(controller_methods(ctrl, ["controller"]), list(sentences), ctrl.target_encoder, progress=False)
    return {k: float(v) for k, v in res["controller"]["summary"].items() if v is not None}
