import torch

from invemb.scratch.data import (DataConfig, Pair, PairDataset, TripletDataset, article_pairs, build_pairs,
                                 in_batch_negative_batches, split_sentences)


def test_split_sentences_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. R. Tolkien in 1950. They talked, e.g. about Mt. Everest. It rained!  Then 3 more came."
    assert split_sentences(text) == ["Dr. Smith met J. R. R. Tolkien in 1950.", "They talked, e.g. about Mt. Everest.",
                                     "It rained!", "Then 3 more came."]


def test_article_pairs_sources():
    cfg = DataConfig(sources=["title", "adjacent", "simcse"])
    pairs = article_pairs("Cats", "Cats are small animals. They purr a lot. Many live with people.", cfg)
    assert Pair("Cats", "Cats are small animals.", "title") in pairs
    assert Pair("Cats are small animals.", "They purr a lot.", "adjacent") in pairs
    assert Pair("They purr a lot.", "Many live with people.", "adjacent") in pairs
    assert Pair("Cats are small animals.", "Cats are small animals.", "simcse") in pairs
    assert len(pairs) == 4


def _articles(n=200):
    return [{"title": f"Thing {i}", "extract": f"Thing {i} is an object number {i}. It has {i} parts inside. "
             f"People like thing {i} a lot."} for i in range(n)]


class _FakeSynset:
    def __init__(self, i):
        self.i = i

    def name(self):
        return f"word{self.i}.n.01"

    def definition(self):
        return f"a thing with {self.i} legs"

    def lemmas(self):
        return [type("L", (), {"name": lambda s: f"word_{self.i}"})()]


class _FakeWordNet:
    def all_synsets(self):
        return (_FakeSynset(i) for i in range(50))


def test_build_pairs_splits_by_document_and_includes_wordnet():
    cfg = DataConfig(eval_pairs=10)
    out = build_pairs(cfg, articles=_articles(), wn=_FakeWordNet())
    train_titles = {p.a for p in out["train"] if p.source == "title"}
    dev_titles = {p.a for p in out["dev_title"]}
    assert dev_titles and not (train_titles & dev_titles)
    assert len(out["dev_title"]) <= 10
    assert any(p.source == "wordnet" and p.a.startswith("word ") for p in out["train"])
    assert out["dev_wordnet"] and all(p.a.startswith("a thing with") and p.b.startswith("word ") for p in out["dev_wordnet"])
    assert {p.source for p in out["train"]} == {"title", "adjacent", "simcse", "wordnet"}


def test_triplet_negatives_come_from_other_pairs():
    pairs = [Pair(f"q{i}", f"d{i}", "title") for i in range(10)]
    ds = TripletDataset(pairs, seed=3)
    a, p, n = ds.triplets(list(range(10)))
    assert all(x != y for x, y in zip(p, n))
    assert sorted(n) == sorted(p)  # every positive is used once as a negative


def test_in_batch_negative_batches_have_no_repeated_text():
    pairs = [Pair("same", f"d{i}", "title") for i in range(5)] + [Pair(f"q{i}", f"d{i}", "x") for i in range(20)]
    ds = PairDataset(pairs)
    batches = in_batch_negative_batches(ds, 8, torch.Generator().manual_seed(0))
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) >= 24  # a last lone pair (no negatives) may be left out
    for b in batches:
        texts = [t for i in b for t in {ds[i].a, ds[i].b}]
        assert len(texts) == len(set(texts))
    assert max(len(b) for b in batches) == 8
