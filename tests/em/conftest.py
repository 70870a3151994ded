import pytest

SENTENCES = """The cat sat on the mat and looked happy.
A big dog ran across the green field quickly.
The bank raised its loan rates again this year.
We walked along the river bank in the cold morning.
The prime minister gave a long speech in New York.
It is not good to eat too much sugar every day.
The small child was glad to see the large elephant.
Hot soup is good on a cold winter evening.
The old man read a short book by the quiet lake.
She bought a new car from the local dealer last week.
The students began the difficult exam at noon.
A strong wind blew across the empty beach all night.
The doctor gave the sick patient some strong medicine.
The quick brown fox jumped over the lazy dog.
Many people visit the famous museum every summer.
The farmer planted corn in the wide field in spring.
The young singer sang a beautiful song on the stage.
The heavy rain flooded the narrow streets of the town.
The chef cooked a delicious meal for the happy guests.
A bright light shone through the dark window at night.""".splitlines()


@pytest.fixture(scope="session")
def tiny_em_run(tmp_path_factory, tiny_bert_dir):
    """A tiny EM trained end to end on a tiny random BERT and a tiny corpus (seconds)."""
    from invemb.em.train import train_em

    root = tmp_path_factory.mktemp("em")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(SENTENCES[i:i + 2]) for i in range(0, len(SENTENCES), 2)) * 3)
    cfg = tiny_cfg(tiny_bert_dir, root, corpus)
    metrics = train_em(cfg, root / "run", progress=False)
    return root / "run", cfg, metrics


def tiny_cfg(backbone_dir, root, corpus_file, **overrides):
    from invemb.em.config import EMConfig

    return EMConfig.preset("tiny", **{
        "backbone.path": str(backbone_dir), "data_dir": str(root / "data"),
        "corpus.sources": [], "corpus.files": [str(corpus_file)], "corpus.dev_fraction": 0.3, "corpus.test_fraction": 0.0,
        "max_train_sentences": 40, "max_dev_sentences": 10, "dev_units": 10, "train.epochs": 2, **overrides})
