"""Named suites of evaluators, run over several encoders with the data loaded once.

``run_suite({"backbone": enc, "em": enc2}, "all", EvalConfig.preset("default"))`` returns the
results dict that :mod:`invemb.eval.report` turns into ``results.json``, ``report.md`` and plots.
Evaluators whose optional data is missing are reported under ``not_run`` with the reason; bad
encoder output (NaN, wrong width) raises, naming the encoder and the task.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from invemb.config import Config
from invemb.eval.base import MemoEncoder, NotRun
from invemb.text.sources import MissingDataError


@dataclasses.dataclass
class EvalConfig(Config):
    seed: int = 0
    order_sentences: int = 300
    relation_pairs: int = 1000
    units: int = 5000  # neighbour candidates (most frequent units of `vocab`, else of WordNet)
    purity_queries: int = 1000
    neighbours_k: int = 10
    retrieval_queries: int = 300
    knn_texts: int = 600
    knn_k: int = 10
    knn_folds: int = 5
    typo_sentences: int = 300
    typo_rates: list[float] = dataclasses.field(default_factory=lambda: [0.05, 0.1, 0.2])
    stats_texts: int = 1000
    inversion_sentences: int = 200  # held-out sentences the inversion evaluator decodes (~1 s each on CPU)
    plot_units: int = 400  # units in the PCA / t-SNE plots
    vocab: str = ""  # a Vocab JSON (`invemb vocab build`): units for purity, OOV for word similarity, plots
    controller: str = ""  # a controller run for the inversion evaluator
    sts: str = ""  # a sentence-pair TSV (sentence1, sentence2, score), e.g. STS-B: not installable here
    wiki_path: str = ""  # summaries_en-us.json; "" = the installed package's
    batch_size: int = 64

    def __post_init__(self) -> None:
        # the least each evaluator can work with (a typo MRR ranks among 2+ sentences; stats need 3 texts)
        least = {"order_sentences": 1, "relation_pairs": 1, "units": 1, "purity_queries": 1, "neighbours_k": 1,
                 "retrieval_queries": 1, "knn_texts": 1, "knn_k": 1, "knn_folds": 2, "typo_sentences": 2,
                 "stats_texts": 3, "inversion_sentences": 1, "plot_units": 1, "batch_size": 1}
        small = [f"{k}={getattr(self, k)} (at least {n})" for k, n in least.items() if not getattr(self, k) >= n]
        if self.knn_folds > self.knn_texts:
            small.append(f"knn_folds={self.knn_folds} (at most knn_texts={self.knn_texts})")
        if small:
            raise ValueError(f"eval sizes too small: {', '.join(small)}")
        from invemb.eval.typo import check_typo_rates

        check_typo_rates(self.typo_rates, name="typo_rates")

    def check_paths(self, out: str | Path | None = None) -> None:
        """Refuse a file the user named that is not there, and an ``out`` that is a file, before any
        model loads (the evaluators would otherwise report a missing file as optional data "not
        run", and a bad ``out`` would fail after the whole suite)."""
        named = {"vocab": self.vocab, "controller": self.controller, "sts": self.sts, "wiki_path": self.wiki_path}
        for key, path in named.items():
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such file or folder (given as {key})")
        for key in ("sts", "wiki_path"):
            if getattr(self, key) and not Path(getattr(self, key)).is_file():
                raise IsADirectoryError(f"{getattr(self, key)}: is a folder; {key} names a file")
        if self.sts:
            from invemb.eval.wordsim import load_word_pairs

            load_word_pairs(self.sts)  # a malformed line is reported now, naming file and line
        if self.vocab:
            import json

            from invemb.text.vocab import Vocab

            try:
                Vocab.load(self.vocab)
            except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{self.vocab}: not a vocabulary JSON (`invemb vocab build` writes one)") from None
        if self.controller:
            from invemb.inversion.controller import controller_info

            controller_info(self.controller)
        if out:
            from invemb.io import check_output_folder

            check_output_folder(out, "the report")

    presets = {
        "tiny": {"order_sentences": 40, "relation_pairs": 100, "units": 400, "purity_queries": 50,
                 "retrieval_queries": 40, "knn_texts": 120, "knn_k": 5, "knn_folds": 3, "typo_sentences": 40,
                 "stats_texts": 100, "plot_units": 120, "inversion_sentences": 20},
        "default": {},
        "full": {"order_sentences": 2000, "relation_pairs": 5000, "units": 20000, "purity_queries": 2000,
                 "retrieval_queries": 2000, "knn_texts": 5000, "typo_sentences": 2000, "stats_texts": 5000,
                 "plot_units": 1000, "batch_size": 256, "inversion_sentences": 1000},
    }


def _factories(cfg: EvalConfig) -> dict[str, Callable[[], object]]:
    """Evaluator name -> constructor. Constructors are cheap: data loads on first use."""
    from invemb.eval import data
    from invemb.eval.classification import KNNClassificationEvaluator
    from invemb.eval.inversion import InversionEvaluator
    from invemb.eval.neighbours import NeighbourPurityEvaluator, vocab_units
    from invemb.eval.order import OrderEvaluator
    from invemb.eval.relations import RelationEvaluator
    from invemb.eval.retrieval import RetrievalEvaluator
    from invemb.eval.stats import EmbeddingStatsEvaluator
    from invemb.eval.typo import TypoEvaluator
    from invemb.eval.wordsim import WordSimEvaluator

    wiki, seed, n_q, bs = cfg.wiki_path or None, cfg.seed, cfg.retrieval_queries, cfg.batch_size
    vocab = (lambda: set(vocab_units(cfg.vocab, n=10**9)[0])) if cfg.vocab else (lambda: None)
    # Each evaluator its own sample of held-out sentences, so that its sentences depend on the seed
    # and its own size only (a prefix of one shared sample changed with the other evaluators' sizes).
    # Sentences two evaluators share are still encoded once (MemoEncoder).
    sentences = lambda n: (lambda: data.wiki_sentences(n, seed, wiki_path=wiki))
    def sts():
        if not cfg.sts:
            raise NotRun("no sentence-pair file given (--set sts=PATH to a TSV: sentence1, sentence2, score)")
        return WordSimEvaluator(cfg.sts, lowercase=False, name="sts")

    return {
        "order": lambda: OrderEvaluator(sentences(cfg.order_sentences)(), seed, bs),
        "relations": lambda: RelationEvaluator(None, seed, max_pairs=cfg.relation_pairs),
        "simlex999": lambda: WordSimEvaluator("simlex999", vocab()),
        "wordsim353": lambda: WordSimEvaluator("wordsim353", vocab()),
        "sts": sts,
        "neighbours": lambda: NeighbourPurityEvaluator(None, cfg.vocab or None, cfg.units, cfg.purity_queries,
                                                       cfg.neighbours_k, seed),
        "title_to_summary": lambda: RetrievalEvaluator(loader=lambda: data.title_summary_task(n_q, seed, wiki_path=wiki),
                                                       batch_size=bs, name="title_to_summary"),
        "gloss_to_lemma": lambda: RetrievalEvaluator(loader=lambda: data.gloss_lemma_task(n_q, seed),
                                                     batch_size=bs, name="gloss_to_lemma"),
        "first_sentence_to_rest": lambda: RetrievalEvaluator(
            loader=lambda: data.first_sentence_rest_task(n_q, seed, wiki_path=wiki), batch_size=bs, name="first_sentence_to_rest"),
        "knn_topic": lambda: KNNClassificationEvaluator(
            loader=lambda: data.topic_articles(cfg.knn_texts, seed, wiki, min_per_label=cfg.knn_folds),
            k=cfg.knn_k, folds=cfg.knn_folds, seed=seed, batch_size=bs),
        "typo": lambda: TypoEvaluator(loader=sentences(cfg.typo_sentences), rates=tuple(cfg.typo_rates), seed=seed,
                                      batch_size=bs),
        "stats": lambda: EmbeddingStatsEvaluator(loader=sentences(cfg.stats_texts), batch_size=bs),
        "inversion": lambda: InversionEvaluator(cfg.controller or None, loader=sentences(cfg.inversion_sentences)),
    }


SUITES = {
    "order": ["order"],
    "relations": ["relations"],
    "word": ["simlex999", "wordsim353", "relations", "neighbours"],
    "sts": ["sts"],
    "retrieval": ["title_to_summary", "gloss_to_lemma", "first_sentence_to_rest"],
    "classification": ["knn_topic"],
    "typo": ["typo"],
    "stats": ["stats"],
    "inversion": ["inversion"],
}
SUITES["all"] = list(dict.fromkeys(name for names in SUITES.values() for name in names))


def suite_names(suite: str) -> list[str]:
    """Evaluator names of a suite: a suite name, an evaluator name, or a comma list of either."""
    known = set(_factories(EvalConfig()))
    names: list[str] = []
    for part in (p.strip() for p in suite.split(",") if p.strip()):
        if part in SUITES:
            names += SUITES[part]
        elif part in known:
            names.append(part)
        else:
            raise ValueError(f"unknown suite or evaluator {part!r}; suites: {', '.join(SUITES)}; "
                             f"evaluators: {', '.join(sorted(known))}")
    if not names:
        raise ValueError("empty suite")
    return list(dict.fromkeys(names))


def run_suite(encoders: dict[str, object], suite: str = "all", cfg: EvalConfig | None = None, progress: bool = True,
              evaluators: dict[str, object] | None = None) -> dict:
    """Every evaluator of ``suite`` on every encoder; BM25 beside them on retrieval tasks.

    ``evaluators`` (name -> evaluator) replaces the suite's own, e.g. for tests or custom data.
    """
    from tqdm.auto import tqdm

    if not encoders:
        raise ValueError("no encoders to evaluate")
    cfg = cfg or EvalConfig()
    encoders = {name: enc if isinstance(enc, MemoEncoder) else MemoEncoder(enc) for name, enc in encoders.items()}
    if evaluators is not None:
        makers = {name: (lambda ev=ev: ev) for name, ev in evaluators.items()}
    else:
        factories = _factories(cfg)
        makers = {name: factories[name] for name in suite_names(suite)}
    results: dict[str, dict[str, dict[str, float]]] = {}
    primary, not_run, seconds = {}, {}, {}
    bar = tqdm(total=len(makers) * len(encoders), desc="eval", unit="run", dynamic_ncols=True, disable=not progress)
    for ev_name, make in makers.items():
        results[ev_name], seconds[ev_name] = {}, {}
        skipped: dict[str, str] = {}  # encoder -> why this evaluator is not for it
        done = 0
        try:
            evaluator = make()
            primary[ev_name] = evaluator.primary_metric
            for enc_name, encoder in encoders.items():
                bar.set_postfix_str(f"{ev_name} / {enc_name}")
                start = time.perf_counter()
                try:
                    results[ev_name][enc_name] = evaluator(encoder)
                    seconds[ev_name][enc_name] = round(time.perf_counter() - start, 2)
                except NotRun as err:  # not for this encoder (a controller trained on another): the others run
                    skipped[enc_name] = str(err)
                done += 1
                bar.update()
            if not results[ev_name]:
                raise NotRun("; ".join(dict.fromkeys(skipped.values())))
            not_run.update({f"{ev_name} ({enc_name})": why for enc_name, why in skipped.items()})
            if hasattr(evaluator, "bm25"):
                results[ev_name]["bm25"] = evaluator.bm25()
        except (NotRun, MissingDataError) as err:  # optional data missing: say why, run the rest
            not_run[ev_name] = str(err)
            results.pop(ev_name)
            primary.pop(ev_name, None)
            bar.update(len(encoders) - done)
    bar.close()
    return {"suite": suite, "config": cfg.to_dict(), "encoders": list(encoders), "primary": primary,
            "results": results, "not_run": not_run, "seconds": seconds}


def plot_units_for(cfg: EvalConfig) -> tuple[list[str], list[str]] | None:
    """Units and categories for the PCA / t-SNE plot: the vocabulary's, else frequent WordNet
    lemmas by lexicographer file; None when neither is installed."""
    from invemb.eval.neighbours import vocab_units, wordnet_units

    try:
        if cfg.vocab:
            return vocab_units(cfg.vocab, cfg.plot_units)
        return wordnet_units(cfg.plot_units)
    except MissingDataError:
        return None


def evaluate(encoders: dict[str, object], suite: str = "all", cfg: EvalConfig | None = None, out: str | None = None,
             progress: bool = True) -> dict:
    """:func:`run_suite`, then (with ``out``) results.json, report.md and plots in ``out``."""
    from invemb.eval.report import write_report

    cfg = cfg or EvalConfig()
    cfg.check_paths(out)
    encoders = {name: MemoEncoder(enc) for name, enc in encoders.items()}  # shared by the suite and the plots
    results = run_suite(encoders, suite, cfg, progress)
    if out:
        results["files"] = write_report(results, out, encoders, plot_units_for(cfg), cfg.seed)
    return results


def name_encoders(specs: list[str], load=None) -> dict[str, object]:
    """``["backbone", "runs/em"]`` -> {"backbone": ..., "em": ...}: each spec loaded with
    :func:`invemb.api.load` (a run folder, a backbone folder, or ``backbone``), named by its
    folder, with ``#2``, ``#3`` added to repeated names."""
    if load is None:
        from invemb.api import load
    if not specs:
        raise ValueError("give at least one --encoder (a run folder, a backbone folder, or `backbone`)")
    encoders: dict[str, object] = {}
    for spec in specs:
        base = Path(spec).name or spec
        name, i = base, 1
        while name in encoders or name == "bm25":  # "bm25" names the lexical baseline beside retrieval results
            i += 1
            name = f"{base}#{i}"
        encoders[name] = load(spec)
    return encoders
