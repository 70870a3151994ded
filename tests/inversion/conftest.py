import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # small ops: one thread is many times faster than two on a busy CPU

from toy import BagEncoder, toy_sentences, toy_vocab  # noqa: E402


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A tiny controller trained on the toy world (about 10 s)."""
    from invemb.io import write_jsonl
    from invemb.inversion.train import ControllerTrainConfig, train_controller

    root = tmp_path_factory.mktemp("toy")
    toy_vocab().save(root / "vocab.json")
    write_jsonl(root / "train.jsonl", [{"text": s} for s in toy_sentences(240, seed=0)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(root / "vocab.json"), train_file=str(root / "train.jsonl"),
                                       max_sentences=240, dev_sentences=48, states_per_sentence=4).replace(**{"train.epochs": 12})
    encoder = BagEncoder()
    summary = train_controller("toy", cfg, root / "run", encoder=encoder)
    return root / "run", encoder, summary
