import json
import math

import pytest
import torch

import invemb
from invemb.em.train import load_run
from invemb.training.metrics_log import read_metrics



def test_run_folder_contents(tiny_em_run):
    run, cfg, metrics = tiny_em_run
    for name in ("config.json", "metrics.jsonl", "head.safetensors", "vocab.json", "lexicon.json", "report.md",
                 "plots/train_curves.png", "plots/epoch_metrics.png", "index/index.faiss", "st/modules.json",
                 "backbone_metrics.json", "untrained_metrics.json"):
        assert (run / name).exists(), name
    steps = read_metrics(run / "metrics.jsonl", "step")
    keys = set().union(*steps)
    for k in ("loss_contrastive", "loss_synonym", "loss_recon", "loss_anchor", "loss_order", "loss_unit", "temperature",
              "lr", "items_per_s", "recon_cos"):
        assert k in keys, k
    epochs = read_metrics(run / "metrics.jsonl", "epoch")
    assert len(epochs) == 2
    assert {"dev_recon_cos", "dev_unit_recall@10", "dev_order_discrimination"} <= set(epochs[-1])
    assert 0.0 <= metrics["dev_order_discrimination"] <= 1.0
    assert steps[0]["temperature"] > steps[-1]["temperature"]


def test_training_improves_reconstruction(tiny_em_run):
    run, _, metrics = tiny_em_run
    untrained = json.loads((run / "untrained_metrics.json").read_text())
    assert metrics["dev_recon_cos"] > untrained["dev_recon_cos"] + 0.1


def test_load_gives_identical_vectors_and_sentence_transformers_round_trip(tiny_em_run):
    from sentence_transformers import SentenceTransformer

    run, _, _ = tiny_em_run
    model = invemb.load(run)
    texts = ["the cat", "river bank", "the prime minister gave a speech"]
    a, b = model.encode(texts), load_run(run).encode(texts)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    st = SentenceTransformer(str(run / "st"), device="cpu", trust_remote_code=True)
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), a, rtol=1e-5, atol=1e-5)


def test_mismatched_backbone_refused(tiny_em_run, tmp_path):
    from invemb.backbone.hf import save_tiny_bert

    run, _, _ = tiny_em_run
    other = save_tiny_bert(tmp_path / "other", ["different"], hidden=32, layers=1, seed=5)
    with pytest.raises(ValueError, match="trained on backbone .* but the given backbone is"):
        load_run(run, backbone=other)


class Killed(RuntimeError):
    pass


def _dying_loss(at_step: int):
    """EMTask.loss that raises :class:`Killed` at optimizer step ``at_step`` (a kill mid-run)."""
    from invemb.em.train import EMTask

    original = EMTask.loss

    def loss(self, model, batch, ctx):
        if ctx.step == at_step:
            raise Killed()
        return original(self, model, batch, ctx)

    return loss


def test_killed_run_resumes_to_same_metrics(tiny_em_run, tmp_path, monkeypatch):
    from invemb.em import train as em_train
    from invemb.em.train import train_em

    run, cfg, metrics = tiny_em_run
    killed_cfg = cfg.replace(**{"train.checkpoint_every": 2})
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(em_train.EMTask, "loss", _dying_loss(3))
        train_em(killed_cfg, tmp_path / "killed", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_em(killed_cfg, tmp_path / "killed", progress=False)
    other_cfg = killed_cfg.replace(**{"train.lr": 1.0, "loss.order": 0.0})  # resume trains the run's own config
    resumed = train_em(other_cfg, tmp_path / "killed", resume=True, progress=False)
    for k, v in metrics.items():
        if k.startswith("dev_"):
            assert resumed[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # The epoch rows' train means cover the whole epoch, also the one resumed in its middle.
    whole, killed = (read_metrics(r / "metrics.jsonl", "epoch") for r in (run, tmp_path / "killed"))
    assert len(whole) == len(killed)
    for a, b in zip(whole, killed):
        train_terms = [k for k in a if k.startswith("train_")]
        assert train_terms and {k: b[k] for k in train_terms} == pytest.approx({k: a[k] for k in train_terms}, rel=1e-4, abs=1e-6)


def test_a_run_killed_before_its_first_checkpoint_starts_its_loop_again(tiny_em_run, tmp_path, monkeypatch):
    from invemb.em import train as em_train
    from invemb.em.train import train_em

    run, cfg, metrics = tiny_em_run
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(em_train.EMTask, "loss", _dying_loss(1))
        train_em(cfg, tmp_path / "killed", progress=False)
    assert not (tmp_path / "killed/checkpoints").exists() or not list((tmp_path / "killed/checkpoints").iterdir())
    assert read_metrics(tmp_path / "killed/metrics.jsonl", "step")  # it had logged its first step
    resumed = train_em(cfg, tmp_path / "killed", resume=True, progress=False)
    for k, v in metrics.items():
        if k.startswith("dev_"):
            assert resumed[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    steps = [r["step"] for r in read_metrics(tmp_path / "killed/metrics.jsonl", "step")]
    assert steps == sorted(set(steps)) and steps[0] == 1  # one fresh log, no row of the killed attempt twice


def test_unfrozen_top_layer_trains_and_saves_its_backbone(tiny_em_run, tmp_path):
    from invemb.backbone.hf import HFBackbone
    from invemb.em.train import train_em

    run, cfg, _ = tiny_em_run
    ucfg = cfg.replace(**{"backbone.unfreeze_layers": 1, "train.epochs": 1})
    train_em(ucfg, tmp_path / "u", progress=False)
    saved = json.loads((tmp_path / "u" / "config.json").read_text())
    assert saved["em"]["backbone"]["path"].endswith("backbone") and saved["em"]["backbone"]["unfreeze_layers"] == 0
    tuned, original = HFBackbone(ucfg.backbone.replace(path=saved["em"]["backbone"]["path"])), HFBackbone(cfg.backbone)
    assert tuned.identity()["fingerprint"] != original.identity()["fingerprint"]
    # top layer moved, embeddings (frozen) did not
    sd_t, sd_o = tuned.model.state_dict(), original.model.state_dict()
    assert torch.equal(sd_t["embeddings.word_embeddings.weight"], sd_o["embeddings.word_embeddings.weight"])
    assert not torch.equal(sd_t["encoder.layer.1.output.dense.weight"], sd_o["encoder.layer.1.output.dense.weight"])
    model = invemb.load(tmp_path / "u")
    assert model.encode(["the cat"]).shape == (1, ucfg.head.embed_dim)


@pytest.mark.slow
def test_short_training_on_real_minilm_beats_untrained_head(tmp_path):
    """The bundled MiniLM, a short tiny-preset run on a small real corpus slice (Wikipedia + WordNet)."""
    from invemb.em.config import EMConfig
    from invemb.em.train import train_em

    cfg = EMConfig.preset("tiny", **{"data_dir": str(tmp_path / "data"), "corpus.max_docs_per_source": 150,
                                     "train.epochs": 3, "max_train_sentences": 150, "max_dev_sentences": 40})
    final = train_em(cfg, tmp_path / "run", progress=False)
    untrained = json.loads((tmp_path / "run" / "untrained_metrics.json").read_text())
    backbone = json.loads((tmp_path / "run" / "backbone_metrics.json").read_text())
    # The tiny head squeezes MiniLM's 384 dims through 32, so reconstruction tops out near 0.55
    # here; the default preset's >= 0.9 is measured by bench/em_quality.py.
    assert final["dev_recon_cos"] > max(0.4, untrained["dev_recon_cos"] + 0.2)
    assert final["dev_unit_recall@10"] > untrained["dev_unit_recall@10"]
    assert final["dev_order_discrimination"] >= untrained["dev_order_discrimination"]
    assert 0.0 <= backbone["dev_order_discrimination"] <= 1.0


def test_run_keeps_unit_vectors_a_controller_reuses(tiny_em_run):
    """unit_vectors.safetensors: every unit's vector (from the cached features), tagged with the
    encoder's and the vocabulary's fingerprints, equal to encoding the units live."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from invemb.inversion.units import cached_unit_vectors, encoder_fingerprint
    from invemb.text.vocab import Vocab

    run, _, _ = tiny_em_run
    vocab = Vocab.load(run / "vocab.json")
    model = invemb.load(run)
    path = run / "unit_vectors.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta == {"encoder": encoder_fingerprint(model), "vocab": vocab.fingerprint()}
    units = load_file(str(path))["units"]
    assert units.shape == (len(vocab), model.dim)
    torch.testing.assert_close(units[:20], model.encode(vocab.units[:20]), atol=2e-3, rtol=0)
    # the controller's loader takes it as is (no encoder call) when fingerprints match
    class NoCalls:
        dim = model.dim

        def encode(self, texts, batch_size=64):
            raise AssertionError("re-encoded the vocabulary")

    copy = run.parent / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    assert torch.equal(cached_unit_vectors(NoCalls(), vocab, copy, meta["encoder"], progress=False), units)


def test_inversion_finds_the_corpus_an_em_run_was_trained_from(tiny_em_run, tmp_path):
    from invemb.em.data import corpus_dir
    from invemb.inversion.harness import resolve_corpus

    run, cfg, _ = tiny_em_run
    assert resolve_corpus(None, run) == resolve_corpus("data/built/corpus", run) == corpus_dir(cfg)  # the default: the run's
    assert resolve_corpus(corpus_dir(cfg), "backbone") == corpus_dir(cfg)  # a built corpus given wins
    with pytest.raises(FileNotFoundError, match="data/no-such-corpus: no built corpus here"):
        resolve_corpus("data/no-such-corpus", run)  # a folder the user named is not swapped for the run's
    with pytest.raises(FileNotFoundError, match="no built corpus here"):
        resolve_corpus(tmp_path / "nothing", "backbone")


def test_several_swaps_per_sentence_become_masked_order_negatives(tiny_em_run, tmp_path):
    from invemb.backbone.hf import HFBackbone
    from invemb.em.data import prepare
    from invemb.em.train import build_cache, train_em

    _, cfg, _ = tiny_em_run
    scfg = cfg.replace(**{"loss.order_swaps": 3, "train.epochs": 1})
    data = prepare(scfg, progress=False)
    cache, _, rows = build_cache(scfg, HFBackbone(scfg.backbone), data, progress=False)
    n = len(data.train_sentences)
    assert rows["swapped"].shape == rows["swapped_mask"].shape == (n, 3)
    assert rows["swapped_mask"][:, 0].all() and rows["swapped_mask"][:, 1:].any()
    for i, item in enumerate(data.train_sentences):
        swaps = [item.swapped] + item.more_swaps
        assert rows["swapped_mask"][i].sum() == len(swaps) == len(set(swaps)) and item.text not in swaps
        used = rows["swapped"][i][rows["swapped_mask"][i]]
        assert len(set(used.tolist())) == len(swaps)  # distinct cached rows, one per swapped copy
    train_em(scfg, tmp_path / "swaps", progress=False)
    logged = [json.loads(x) for x in (tmp_path / "swaps" / "metrics.jsonl").read_text().splitlines()]
    order = [r["loss_order"] for r in logged if "loss_order" in r]
    assert order and all(math.isfinite(v) and v > 0 for v in order)


def test_a_run_names_its_corpus_also_after_the_data_keys_change(tiny_em_run, tmp_path):
    """resolve_corpus finds an EM run's corpus from the folder the run recorded; a run from before
    the record gets the folder of the rules of its time (rules 1: no version in the key)."""
    from invemb.em.config import EMConfig
    from invemb.em.data import corpus_dir, run_corpus_dir
    from invemb.inversion.harness import resolve_corpus

    run, cfg, _ = tiny_em_run
    info = json.loads((run / "config.json").read_text())
    assert info["corpus_dir"] == str(corpus_dir(cfg)) and resolve_corpus(None, run) == corpus_dir(cfg)
    legacy = {k: v for k, v in info.items() if k != "corpus_dir"}
    old = run_corpus_dir(legacy)
    assert old != corpus_dir(cfg) and old == corpus_dir(EMConfig.from_dict(info["em"]), legacy=True)
    from pathlib import Path

    moved = {**info, "corpus_dir": str(Path("elsewhere") / Path(info["corpus_dir"]).name)}  # recorded from another folder
    assert run_corpus_dir(moved) == corpus_dir(cfg)
