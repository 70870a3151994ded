"""kNN classification: do nearest neighbours share a label (Wikipedia ``topic``)?

Cosine k-nearest-neighbour classifier (scikit-learn), stratified k-fold cross-validated
predictions; accuracy (primary) and macro-F1.
"""
from __future__ import annotations

from invemb.eval.base import encode_checked


class KNNClassificationEvaluator:
    primary_metric = "accuracy"

    def __init__(self, texts: list[str] | None = None, labels: list[str] | None = None, loader=None, k: int = 10,
                 folds: int = 5, seed: int = 0, batch_size: int = 64, name: str = "knn_topic"):
        if (texts is None) != (labels is None) or (texts is None and loader is None):
            raise ValueError("KNNClassificationEvaluator needs texts and labels, or a loader returning both")
        self._data = (list(texts), list(labels)) if texts is not None else None
        self.loader, self.k, self.folds, self.seed, self.batch_size, self.name = loader, k, folds, seed, batch_size, name

    @property
    def data(self) -> tuple[list[str], list[str]]:
        if self._data is None:
            self._data = self.loader()
        return self._data

    def __call__(self, encoder) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.neighbors import KNeighborsClassifier

        texts, labels = self.data
        if len(texts) != len(labels):
            raise ValueError(f"{self.name}: {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError(f"{self.name}: no label has {self.folds} texts in the sample (more texts or fewer folds)")
        smallest = min(labels.count(c) for c in set(labels))
        if smallest < self.folds:
            raise ValueError(f"{self.name}: a label has only {smallest} examples, fewer than {self.folds} folds")
        x = encode_checked(encoder, texts, task=self.name, batch_size=self.batch_size).numpy()
        # no more neighbours than a training fold holds (a small sample would fail in scikit-learn)
        k = min(self.k, len(texts) - -(-len(texts) // self.folds))
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        predicted = cross_val_predict(knn, x, labels, cv=StratifiedKFold(self.folds, shuffle=True, random_state=self.seed))
        return {"accuracy": float(accuracy_score(labels, predicted)),
                "macro_f1": float(f1_score(labels, predicted, average="macro")),
                "n_texts": float(len(texts)), "n_labels": float(len(set(labels))), "k": float(k)}
