"""UnitIndex kinds and their FAISS parameters, save/load, and `invemb index build` options."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from invemb.index import IndexConfig, UnitIndex


def _vectors(n: int = 3000, d: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (like word vectors: neighbourhoods, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, d))
    x = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


@pytest.fixture(scope="module")
def data():
    x = _vectors()
    units = [f"u{i}" for i in range(len(x))]
    q = _vectors(200, seed=1)
    exact = UnitIndex.build(x, units, IndexConfig(kind="flat")).search(q, 10)[1]
    return x, units, q, exact


def test_flat_search_in_query_chunks_equals_faiss(data):
    x, units, q, exact = data
    index = UnitIndex.build(x, units, IndexConfig(kind="flat"))
    want_scores, want_ids = index.index.search(q, 10)  # FAISS's own exact scan
    # 3000 vectors and a budget of 7000 scores: chunks of 2 queries, the last of the 199 holds one
    scores, ids = index._flat_search(q[:199], 10, max_scores=7000)
    assert ids.shape == scores.shape == (199, 10)
    assert (ids == want_ids[:199]).mean() > 0.999  # ties may order differently
    np.testing.assert_allclose(scores, want_scores[:199], atol=1e-5)
    assert (exact == want_ids).mean() > 0.999


def test_hnsw_parameters_reach_faiss_and_survive_save_load(data, tmp_path):
    x, units, q, exact = data
    cfg = IndexConfig(kind="hnsw", hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64)
    idx = UnitIndex.build(x, units, cfg)
    assert idx.index.hnsw.efConstruction == 40 and idx.index.hnsw.efSearch == 64
    assert idx.index.hnsw.nb_neighbors(1) == 8  # M neighbours on the upper layers (2M on layer 0)
    assert _recall(idx.search(q, 10)[1], exact) > 0.9
    idx.save(tmp_path / "h")
    back = UnitIndex.load(tmp_path / "h")
    assert back.cfg == idx.cfg and back.index.hnsw.efSearch == 64
    np.testing.assert_array_equal(back.search(q, 10)[1], idx.search(q, 10)[1])


def test_ivfpq_parameters_and_training_sample(data, tmp_path):
    x, units, q, exact = data
    cfg = IndexConfig(kind="ivfpq", ivf_nlist=32, ivf_nprobe=8, pq_m=8, pq_bits=8, ivf_train_size=1000)
    idx = UnitIndex.build(x, units, cfg)
    assert idx.index.nlist == 32 and idx.index.nprobe == 8 and idx.index.pq.M == 8 and idx.index.pq.nbits == 8
    assert idx.index.code_size == 8 and idx.index.ntotal == len(x)
    assert _recall(idx.search(q, 10)[1], exact) > 0.3
    idx.save(tmp_path / "p")
    back = UnitIndex.load(tmp_path / "p")
    assert back.index.nprobe == 8
    np.testing.assert_array_equal(back.search(q, 10)[1], idx.search(q, 10)[1])
    # More lists scanned -> recall does not drop.
    idx.index.nprobe = 32
    assert _recall(idx.search(q, 10)[1], exact) >= _recall(back.search(q, 10)[1], exact)


def test_ivfpq_with_exact_refinement(data, tmp_path):
    x, units, q, exact = data
    cfg = IndexConfig(kind="ivfpq", ivf_nlist=32, ivf_nprobe=16, pq_m=8, refine_k_factor=8)
    idx = UnitIndex.build(x, units, cfg)
    plain = UnitIndex.build(x, units, cfg.replace(refine_k_factor=0))
    assert _recall(idx.search(q, 10)[1], exact) > max(0.9, _recall(plain.search(q, 10)[1], exact))
    scores, ids = idx.search(q, 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5, atol=1e-5)  # exact cosines
    idx.save(tmp_path / "r")
    back = UnitIndex.load(tmp_path / "r")
    assert back.index.k_factor == 8
    np.testing.assert_array_equal(back.search(q, 10)[1], ids)


def test_ivfpq_refuses_too_few_vectors_with_a_clear_message():
    x = _vectors(100)
    with pytest.raises(ValueError, match="ivfpq needs at least 256 training vectors"):
        UnitIndex.build(x, [str(i) for i in range(100)], IndexConfig(kind="ivfpq"))
    with pytest.raises(ValueError, match="must divide"):
        UnitIndex.build(_vectors(), [str(i) for i in range(3000)], IndexConfig(kind="ivfpq", pq_m=5))


def test_auto_picks_flat_then_hnsw(data):
    x, units, _, _ = data
    assert UnitIndex.build(x, units, IndexConfig(kind="auto")).cfg.kind == "flat"
    assert UnitIndex.build(x, units, IndexConfig(kind="auto", auto_threshold=1000, hnsw_m=8,
                                                 hnsw_ef_construction=20)).cfg.kind == "hnsw"


# -- the CLI -------------------------------------------------------------------------------------
def _build_command():
    import typer

    from invemb.cli import app

    group = typer.main.get_command(app)
    return group.commands["index"].commands["build"]


def test_cli_defaults_are_the_config_defaults():
    params = {p.name: p.default for p in _build_command().params}
    cfg = IndexConfig()
    assert (params["hnsw_m"], params["ef_construction"], params["ef_search"]) == \
        (cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_search)
    assert (params["nlist"], params["nprobe"], params["pq_m"], params["pq_bits"], params["train_size"], params["refine"],
            params["threads"]) == (cfg.ivf_nlist, cfg.ivf_nprobe, cfg.pq_m, cfg.pq_bits, cfg.ivf_train_size,
                                   cfg.refine_k_factor, cfg.threads)


def test_cli_index_build_passes_faiss_parameters(tmp_path, tiny_bert_dir):
    from invemb.cli import app
    from invemb.text.vocab import Vocab

    words = [f"word{i}" for i in range(300)]
    Vocab(words, ["word"] * len(words), [1] * len(words)).save(tmp_path / "vocab.json")
    runner = CliRunner()
    base = ["index", "build", "--model", tiny_bert_dir, "--vocab", str(tmp_path / "vocab.json")]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "h"), "--kind", "hnsw", "--hnsw-m", "8",
                                     "--ef-construction", "40", "--ef-search", "24", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "hnsw" and out["config"]["hnsw_ef_search"] == 24
    assert UnitIndex.load(tmp_path / "h").index.hnsw.efSearch == 24
    res = runner.invoke(app, base + ["--out", str(tmp_path / "p"), "--kind", "ivfpq", "--nlist", "4", "--nprobe", "2",
                                     "--pq-m", "8", "--pq-bits", "6"])
    assert res.exit_code == 0, res.output
    idx = UnitIndex.load(tmp_path / "p")
    assert (idx.index.nlist, idx.index.nprobe, idx.index.pq.M, idx.index.pq.nbits) == (4, 2, 8, 6)
    # Refused before any unit is encoded (with the full vocabulary, encoding takes minutes).
    for extra, needle in ((["--kind", "ivfpq", "--pq-bits", "9"], "ivfpq needs at least"),
                          (["--kind", "bogus"], "unknown index kind 'bogus'"),
                          (["--kind", "ivfpq", "--nlist", "4", "--pq-m", "5"], "pq_m=5 must divide the dimension"),
                          (["--hnsw-m", "0", "--nprobe", "0"], "bad index settings: hnsw_m=0, ivf_nprobe=0")):
        res = runner.invoke(app, base + ["--out", str(tmp_path / "bad"), *extra])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not (tmp_path / "bad").exists()
