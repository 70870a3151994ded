"""Word similarity: Spearman correlation of cos(word1, word2) with human ratings.

SimLex-999 (similarity, antonyms rated low) and WordSim-353 (relatedness) ship with gensim's
test data. Any encoder can encode any word, so "out of vocabulary" only means a word missing
from a unit vocabulary given to the evaluator (a model's units); such pairs are counted and
reported (``n_oov``), and the correlation is over the remaining pairs. The same evaluator
scores sentence pairs (STS) from a user-given TSV with ``lowercase=False``.
"""
from __future__ import annotations

from pathlib import Path

from invemb.eval.base import NotRun, encode_unique, rowwise_cos
from invemb.io import read_text_file

DATASETS = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}


def load_word_pairs(dataset: str) -> list[tuple[str, str, float]]:
    """(word1, word2, human score) rows of a bundled dataset name or a TSV path (``#`` comments)."""
    if dataset in DATASETS:
        try:
            from gensim.test.utils import datapath
        except ImportError as err:
            raise NotRun(f"{dataset} comes with gensim's test data: `pip install gensim`") from err
        path = Path(datapath(DATASETS[dataset]))
    else:
        path = Path(dataset)
    if not path.exists():
        raise NotRun(f"word similarity set not found: {path}")
    rows, seen_line = [], False
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{path}:{n}: expected three tab-separated columns (text, text, score)")
        try:
            rows.append((parts[0].strip(), parts[1].strip(), float(parts[2])))
        except ValueError:
            if seen_line:  # only the first line may be a header ("sentence1  sentence2  score")
                raise ValueError(f"{path}:{n}: the score {parts[2].strip()!r} is not a number") from None
        seen_line = True
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


class WordSimEvaluator:
    """Spearman (primary) and Pearson of cosine vs. human score on one word-pair set."""

    primary_metric = "spearman"

    def __init__(self, dataset: str = "simlex999", vocab: set[str] | list[str] | None = None, lowercase: bool = True,
                 name: str | None = None):
        self.dataset, self.lowercase = dataset, lowercase
        self.vocab = set(vocab) if vocab is not None else None
        self.name = name or (dataset if dataset in DATASETS else Path(dataset).stem)
        self._rows: list[tuple[str, str, float]] | None = None

    @property
    def rows(self) -> list[tuple[str, str, float]]:
        if self._rows is None:
            rows = load_word_pairs(self.dataset)
            self._rows = [(a.lower(), b.lower(), s) for a, b, s in rows] if self.lowercase else rows
        return self._rows

    def __call__(self, encoder) -> dict[str, float]:
        from scipy.stats import pearsonr

        rows = self.rows
        kept = [r for r in rows if self.vocab is None or (r[0] in self.vocab and r[1] in self.vocab)]
        if len(kept) < 3:
            raise ValueError(f"{self.name}: only {len(kept)} of {len(rows)} pairs have both words in the vocabulary")
        n = len(kept)
        v = encode_unique(encoder, [a for a, _, _ in kept] + [b for _, b, _ in kept], task=self.name, batch_size=256)
        cos = rowwise_cos(v[:n], v[n:]).numpy()
        human = [s for _, _, s in kept]
        return {"spearman": spearman(cos, human), "pearson": float(pearsonr(cos, human).statistic),
                "n_pairs": float(n), "n_oov": float(len(rows) - n)}
