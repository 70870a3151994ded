"""Retrieval: queries against a corpus, ranked by cosine (FAISS), with BM25 as the lexical peer.

Metrics over the top ``depth`` results of each query (binary relevance): P@K and R@K for each K,
MRR, MAP and nDCG@10. MRR and MAP are truncated at ``depth`` (a relevant document ranked lower
counts as not found). The corpus side is encoded once per call.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from invemb.eval.base import encode_unique

_TOKEN = re.compile(r"\w+")


@dataclasses.dataclass
class RetrievalTask:
    """``relevant[i]``: positions in ``corpus`` that answer ``queries[i]``."""

    name: str
    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]

    def __post_init__(self):
        if len(self.queries) != len(self.relevant):
            raise ValueError(f"{self.name}: {len(self.queries)} queries but {len(self.relevant)} relevance sets")
        if any(not r for r in self.relevant):
            raise ValueError(f"{self.name}: every query needs at least one relevant document")


def retrieval_metrics(ranked: list[list[int]], relevant: list[set[int]], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """P@K, R@K, MRR, MAP and nDCG@10 averaged over queries; ``ranked[i]``: ids best first."""
    if len(ranked) != len(relevant) or not ranked:
        raise ValueError(f"need one ranking per query: {len(ranked)} rankings, {len(relevant)} relevance sets")
    out: dict[str, list[float]] = {f"p@{k}": [] for k in ks} | {f"r@{k}": [] for k in ks} | {"mrr": [], "map": [], "ndcg@10": []}
    for ids, rel in zip(ranked, relevant):
        hits = [i in rel for i in ids]
        for k in ks:
            out[f"p@{k}"].append(sum(hits[:k]) / k)
            out[f"r@{k}"].append(sum(hits[:k]) / len(rel))
        first = next((rank for rank, h in enumerate(hits, 1) if h), None)
        out["mrr"].append(1.0 / first if first else 0.0)
        precisions = [sum(hits[:rank]) / rank for rank, h in enumerate(hits, 1) if h]
        out["map"].append(sum(precisions) / len(rel))
        dcg = sum(1.0 / math.log2(rank + 1) for rank, h in enumerate(hits[:10], 1) if h)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(rel), 10) + 1))
        out["ndcg@10"].append(dcg / ideal)
    return {k: float(np.mean(v)) for k, v in out.items()}


def bm25_rankings(queries: list[str], corpus: list[str], depth: int) -> list[list[int]]:
    """BM25 (Okapi, rank-bm25) rankings of ``corpus`` for each query, best first."""
    from rank_bm25 import BM25Okapi

    tokenize = lambda t: _TOKEN.findall(t.lower()) or ["<empty>"]
    bm25 = BM25Okapi([tokenize(d) for d in corpus])
    depth = min(depth, len(corpus))
    rankings = []
    for q in queries:
        scores = bm25.get_scores(tokenize(q))
        top = np.argpartition(-scores, depth - 1)[:depth]
        rankings.append(top[np.lexsort((top, -scores[top]))].tolist())  # by score, ties by id
    return rankings


def dense_rankings(query_vectors, corpus_vectors, depth: int) -> list[list[int]]:
    """Exact inner-product (cosine, for unit vectors) top-``depth`` with a FAISS flat index."""
    import faiss

    corpus = np.ascontiguousarray(corpus_vectors.numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    _, ids = index.search(np.ascontiguousarray(query_vectors.numpy(), dtype=np.float32), min(depth, len(corpus)))
    return [[int(i) for i in row if i >= 0] for row in ids]


class RetrievalEvaluator:
    """One retrieval task; ``primary_metric`` is MRR. :meth:`bm25` scores the lexical peer."""

    primary_metric = "mrr"

    def __init__(self, task: RetrievalTask | None = None, loader=None, ks: tuple[int, ...] = (1, 5, 10), depth: int = 100,
                 batch_size: int = 64, name: str | None = None):
        if task is None and loader is None:
            raise ValueError("RetrievalEvaluator needs a task or a loader")
        self._task, self.loader, self.ks, self.depth, self.batch_size = task, loader, tuple(ks), depth, batch_size
        self.name = name or task.name

    @property
    def task(self) -> RetrievalTask:
        if self._task is None:
            self._task = self.loader()
        return self._task

    def rank(self, encoder) -> list[list[int]]:
        task = self.task
        corpus = encode_unique(encoder, task.corpus, task=f"{self.name} (corpus)", batch_size=self.batch_size)
        queries = encode_unique(encoder, task.queries, task=f"{self.name} (queries)", batch_size=self.batch_size)
        return dense_rankings(queries, corpus, self.depth)

    def __call__(self, encoder) -> dict[str, float]:
        return retrieval_metrics(self.rank(encoder), self.task.relevant, self.ks) | self._sizes()

    def bm25(self) -> dict[str, float]:
        task = self.task
        return retrieval_metrics(bm25_rankings(task.queries, task.corpus, self.depth), task.relevant, self.ks) | self._sizes()

    def _sizes(self) -> dict[str, float]:
        return {"n_queries": float(len(self.task.queries)), "n_corpus": float(len(self.task.corpus))}
