"""Service fixtures: an app over a recording fake encoder, a random-weight toy controller."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).parents[1] / "inversion"))  # toy world: BagEncoder, toy_vocab
sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import API_KEY, RecordingEncoder, make_client  # noqa: E402
from toy import BagEncoder, toy_sentences, toy_vocab  # noqa: E402


@pytest.fixture
def recording_encoder():
    return RecordingEncoder()


@pytest.fixture
def client(recording_encoder):
    c, _ = make_client(recording_encoder, api_key=API_KEY, max_texts_per_request=8, max_chars_per_text=50,
                       max_body_bytes=4096)
    with c:
        yield c


@pytest.fixture(scope="session")
def toy_controller():
    """A Controller over the toy world with random (untrained) tiny weights: decoding runs end to
    end in milliseconds; what it rebuilds is noise, which the service tests do not judge."""
    from invemb.inversion.controller import Controller, ControllerModel
    from invemb.inversion.decode import DecodeConfig
    from invemb.inversion.length import LengthPrior
    from invemb.inversion.lm import BigramLM
    from invemb.text.vocab import tokenize
    from invemb.inversion.placer import PlacerConfig
    from invemb.inversion.selector import SelectorConfig

    torch.manual_seed(0)
    encoder, vocab = BagEncoder(), toy_vocab()
    model = ControllerModel(encoder.dim, SelectorConfig.preset("tiny"), PlacerConfig.preset("tiny")).eval()
    units = encoder.encode(vocab.units)
    sentences = toy_sentences(50, seed=0)
    prior = BigramLM.build(sentences)
    lengths = LengthPrior.fit(encoder.encode(sentences), torch.tensor([len(tokenize(s)) for s in sentences]))
    return Controller(encoder, vocab, units, model, DecodeConfig.preset("tiny", stop_threshold=1.1, max_steps=4),  # never stops early
                      prior=prior, length_prior=lengths)


@pytest.fixture(scope="session")
def trained_toy_run(tmp_path_factory):
    """A controller run folder trained for one short epoch on the toy world (for load_service)."""
    from invemb.io import write_jsonl
    from invemb.inversion.train import ControllerTrainConfig, train_controller

    root = tmp_path_factory.mktemp("serve_toy")
    toy_vocab().save(root / "vocab.json")
    write_jsonl(root / "train.jsonl", [{"text": s} for s in toy_sentences(40, seed=0)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(root / "vocab.json"), train_file=str(root / "train.jsonl"),
                                       max_sentences=40, dev_sentences=8, states_per_sentence=2).replace(**{"train.epochs": 1})
    encoder = BagEncoder()
    train_controller("toy", cfg, root / "run", encoder=encoder)
    return root / "run", encoder
