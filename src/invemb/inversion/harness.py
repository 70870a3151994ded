"""One harness for the controller and the baselines: same sentences, same targets, same metrics.

Targets are encoded once up front (not charged to any method); every method's reconstruction is
then encoded once more to report cos(encode(reconstruction), target) the same way for all.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from invemb.inversion import metrics
from invemb.inversion.decode import InversionResult
from invemb.text.vocab import tokenize

EVAL_SETS = ("wiki", "wordnet")


DEFAULT_CORPUS = Path("data/built/corpus")


def resolve_corpus(corpus: str | Path | None, em: str | Path | None = None) -> Path:
    """The built corpus to draw sentences from: ``corpus`` when it is a built corpus folder; else,
    when ``corpus`` is None or the default folder, for an EM run folder the corpus that run was
    trained from (its test split is held out). A folder the user named is never swapped for another."""
    if corpus and (Path(corpus) / "sentences.jsonl").exists():
        return Path(corpus)
    if corpus and Path(corpus) != DEFAULT_CORPUS:
        raise FileNotFoundError(f"{corpus}: no built corpus here (run `invemb corpus build --out {corpus}`, "
                                "or leave the corpus out to use the EM run's)")
    cfg_file = Path(str(em)) / "config.json" if em else None
    if cfg_file is not None and cfg_file.exists():
        info = json.loads(cfg_file.read_text())
        if info.get("kind") == "order_bind":  # a view of an EM run: that run's corpus
            from invemb.em.order_bind import em_run

            info = json.loads((em_run(em) / "config.json").read_text())
        if info.get("kind") == "em":
            from invemb.em.data import run_corpus_dir

            found = run_corpus_dir(info)
            if (found / "sentences.jsonl").exists():
                return found
    raise FileNotFoundError(f"{corpus or 'no corpus given'}: no built corpus here (run `invemb corpus build --out "
                            f"{corpus or 'data/built/corpus'}`, or name one: --corpus DIR, for train controller "
                            "--set corpus=DIR)")


def eval_sentences(corpus: str | Path, which: str, n: int, min_words: int = 5, max_words: int = 32,
                   seed: int = 0) -> list[str]:
    """``n`` held-out (test split) sentences: Wikipedia, or WordNet *example* sentences (glosses,
    the first text of each synset, are left out), of ``min_words``-``max_words`` tokens."""
    from invemb.text.corpus import Corpus

    if n < 1:
        raise ValueError(f"--n must be at least 1 sentence, got {n}")

    if which not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {which!r}; choose from {', '.join(EVAL_SETS)}")
    rows = [r for r in Corpus(corpus).rows if r["split"] == "test" and r["source"] == which]
    if which == "wordnet" and all("part" in r for r in rows):
        rows = [r for r in rows if r["part"] > 0]  # part 0 is the gloss
    elif which == "wordnet":  # a corpus built before rows kept their part: the first row of a synset
        first: set[str] = set()  # (wrong where the gloss was dropped as too short or a duplicate)
        examples = []
        for r in rows:
            if r["doc"] in first:
                examples.append(r)
            first.add(r["doc"])
        rows = examples
    texts = [r["text"] for r in rows if min_words <= len(tokenize(r["text"])) <= max_words]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [texts[i] for i in order]


Method = Callable[[torch.Tensor], InversionResult]


class Batched:
    """A method that inverts all targets (N, D) in one call (the controller's lockstep decoding):
    ``fn(targets, progress) -> list[InversionResult]``; its rows' seconds are its wall time over N."""

    def __init__(self, fn: Callable[[torch.Tensor, bool], list[InversionResult]]):
        self.fn = fn


def _results(method: Method | Batched, name: str, targets: torch.Tensor, progress: bool) -> list[tuple[InversionResult, float]]:
    if isinstance(method, Batched):
        results = method.fn(targets, progress)
        return [(r, r.seconds) for r in results]
    items = range(len(targets))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"invert ({name})", unit="sent", dynamic_ncols=True, mininterval=1.0)
    out = []
    for i in items:
        t0 = time.perf_counter()
        res = method(targets[i])
        out.append((res, time.perf_counter() - t0))
    return out


def run_methods(methods: dict[str, Method | Batched], sentences: Sequence[str], encoder, progress: bool = True,
                finished: dict[str, list[dict]] | None = None, on_rows: Callable[[str, list[dict]], None] | None = None) -> dict:
    """{method: {"summary", "by_length", "by_step", "rows"}} for every method on ``sentences``. ``finished``: rows
    of methods already run on these sentences (kept, not run again); ``on_rows(name, rows)`` is called as
    each method that runs here finishes."""
    targets = encoder.encode(list(sentences))  # (N, D)
    out = {}
    for name, method in methods.items():
        rows = (finished or {}).get(name)
        if rows is None:
            rows = [{"text": text, "reconstruction": res.text, "encoder_calls": res.encoder_calls, "seconds": seconds,
                     "steps": len(res.steps), "placed": metrics.placed_units(res.steps)} for text, (res, seconds) in zip(sentences, _results(method, name, targets, progress))]
            filled = [j for j, r in enumerate(rows) if r["reconstruction"].strip()]
            vecs = encoder.encode([rows[j]["reconstruction"] for j in filled]) if filled else torch.empty(0, encoder.dim)
            for r in rows:
                r["cosine"] = None
            for j, v in zip(filled, vecs):
                rows[j]["cosine"] = float(v @ targets[j])
            if on_rows is not None:
                on_rows(name, rows)
        out[name] = {"summary": metrics.summarise(rows), "by_length": metrics.by_length(rows),
                     "by_step": metrics.precision_by_step(rows), "rows": rows}
    return out


def controller_methods(controller, which: Sequence[str] = ("controller", "greedy", "bag", "blackbox"),
                       preset: str = "default", pool=None) -> dict[str, Method | Batched]:
    """The methods of the side-by-side comparison, sharing the controller's encoder and index. ``pool``
    (:func:`invemb.inversion.controller.worker_pool`): the controller's decodings (controller, greedy) run in its
    processes; the baselines run here."""
    from invemb.inversion.baselines import BagConfig, BlackBoxConfig, bag_of_units, black_box_search
    from invemb.inversion.controller import invert_vectors_in_workers

    def decoded(decode) -> Batched:
        if pool is None:
            return Batched(lambda t, progress: controller.invert_vectors(t, decode, progress))
        return Batched(lambda t, progress: invert_vectors_in_workers(t, pool, decode, progress))

    bag_cfg, blackbox_cfg = BagConfig.preset(preset), BlackBoxConfig.preset(preset)  # a bad preset: refused before any work

    def em_part(target: torch.Tensor) -> torch.Tensor:
        """(D,) what the baselines search with: a view's vector's EM part (they know no bound part)."""
        return controller.split(target[None])[0][0]

    table: dict[str, Method | Batched] = {
        "controller": decoded(controller.decode_cfg),
        "greedy": decoded(controller.decode_cfg.replace(beam=1)),
        "bag": lambda t: bag_of_units(em_part(t), controller.index, bag_cfg),
        "blackbox": lambda t: black_box_search(em_part(t), controller.encoder, controller.index, controller.unit_vectors,
                                               blackbox_cfg),
    }
    unknown = [m for m in which if m not in table]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    return {m: table[m] for m in which}


def compare_methods(controller, sets: dict[str, Sequence[str]], methods: Sequence[str], out: str | Path | None = None,
                    preset: str = "default", progress: bool = True, settings: dict | None = None, workers: int = 1,
                    loader: Callable | None = None) -> dict:
    """Metrics per set and method; with ``out``, writes results.json, rows JSONL, F1-vs-length
    and precision-by-step plots. A controller given an order-bound view inverts the view's vectors, and every
    method's cosine is the view's (the baselines search with the vectors' EM part).

    With ``out``, each finished (set, method) waits in ``out/partial/``, a :class:`invemb.io.PartialFolder`
    keyed by the sentences, the controller, its decoding settings, the baseline preset and ``settings``
    (what else the caller chose: the EM, the runtime): killed part-way, the same call again keeps those
    rows and runs only the rest. ``workers`` > 1: the controller's decodings run in that many processes, started
    once for every set and method, each loading its controller with ``loader``
    (:func:`invemb.inversion.controller.worker_pool`); each row's seconds is then its share of the wall time."""
    from invemb.inversion.controller import check_workers, worker_pool

    check_workers(workers, loader)
    decodes = {"controller", "greedy"} & set(methods)
    with worker_pool(loader, workers) if workers > 1 and decodes else contextlib.nullcontext() as pool:  # started on first use
        return _compare(controller, sets, methods, out, preset, progress, settings, pool)


def _compare(controller, sets, methods, out, preset, progress, settings, pool) -> dict:
    """:func:`compare_methods` with its worker pool (or None)."""
    from invemb.io import PartialFolder, atomic_write_json, content_key, read_jsonl, write_jsonl

    partial = None
    if out is not None:
        out = Path(out)
        partial = PartialFolder(out / "partial", content_key(dict(sets), controller.identity, controller.decode_cfg.to_dict(),
                                                             preset, settings or {}))
    results = {}
    for set_name, sentences in sets.items():
        finished = {}
        if partial is not None:
            finished = {m: read_jsonl(partial.path(f"{set_name}_{m}.jsonl")) for m in methods
                        if partial.has(f"{set_name}_{m}.jsonl")}
            if finished and progress:
                print(f"{out}: continuing an interrupted evaluation, {set_name}: {', '.join(finished)} kept", file=sys.stderr)

        def record(method: str, rows: list[dict], set_name: str = set_name) -> None:
            if partial is not None:
                write_jsonl(partial.slot(f"{set_name}_{method}.jsonl"), rows)

        res = run_methods(controller_methods(controller, methods, preset, pool), sentences, controller.target_encoder, progress,
                          finished=finished, on_rows=record)
        results[set_name] = {m: {k: r[k] for k in ("summary", "by_length", "by_step")} for m, r in res.items()}
        if out is not None:
            for m, r in res.items():
                write_jsonl(out / f"rows_{set_name}_{m}.jsonl", r["rows"])
            metrics.plot_f1_vs_length({m: r["rows"] for m, r in res.items()}, out / f"f1_vs_length_{set_name}.png",
                                      f"token F1 against length ({set_name})")
            metrics.plot_precision_by_step({m: r["by_step"] for m, r in res.items()}, out / f"precision_by_step_{set_name}.png",
                                           f"precision of the unit chosen at each step ({set_name})")
    if out is not None:
        atomic_write_json(out / "results.json", results)
        # The folder holds one evaluation: rows and plots of an earlier one with other sets or methods
        # would be read beside these (bench/inversion_compare.py globs rows_*).
        written = {f"{kind}_{s}.png" for s in results for kind in ("f1_vs_length", "precision_by_step")}
        written |= {f"rows_{s}_{m}.jsonl" for s, per in results.items() for m in per}
        for pattern in ("rows_*.jsonl", "f1_vs_length_*.png", "precision_by_step_*.png"):
            for stale in out.glob(pattern):
                if stale.name not in written:
                    stale.unlink()
        partial.discard()
    return results
