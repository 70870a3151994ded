import json

import pytest
from typer.testing import CliRunner

from invemb.cli import app
from invemb.em.ablate import ablation_configs, ablation_markdown, parse_drop

runner = CliRunner()


def test_parse_drop_and_configs():
    assert parse_drop("recon, sem,recon") == ["recon", "sem"]
    assert parse_drop(["order", "unit,queue"]) == ["order", "unit", "queue"]
    with pytest.raises(ValueError, match="unknown objective 'semantic'"):
        parse_drop("semantic")
    with pytest.raises(ValueError, match="names no objective"):
        parse_drop(" , ")
    cfgs = ablation_configs("tiny", ["sem", "queue", "ant"], epochs=3)
    assert list(cfgs) == ["full", "no-sem", "no-queue", "no-ant"]
    assert all(c.train.epochs == 3 for c in cfgs.values())
    full = cfgs["full"].loss
    assert full.anchor > 0 and full.queue > 0 and full.antonym > 0
    assert cfgs["no-sem"].loss.anchor == 0 and cfgs["no-sem"].loss.queue == full.queue
    assert cfgs["no-queue"].loss.queue == 0 and cfgs["no-ant"].loss.antonym == 0
    with pytest.raises(ValueError, match="at least 1"):
        ablation_configs("tiny", ["sem"], epochs=0)


def test_markdown_marks_changes_for_the_worse():
    table = {"dev_recon_cos": {"full": 0.9, "no-recon": 0.5, "no-order": 0.95},
             "order/cos_swap_mean": {"full": 0.8, "no-recon": 0.7, "no-order": 0.99}}
    md = ablation_markdown(table, "tiny", 1, "order")
    assert "| dev_recon_cos | 0.9000 | 0.5000 **(-0.4000)** | 0.9500 (+0.0500) |" in md
    # cos_swap_mean: lower is better, so the rise without the order term is the worse change
    assert "| order/cos_swap_mean | 0.8000 | 0.7000 (-0.1000) | 0.9900 **(+0.1900)** |" in md


def test_ablate_em_end_to_end(tiny_em_run, tmp_path):
    """Two short runs (full, no-order) on the tiny BERT, the order suite over both, the table; a
    second call finds both runs finished and trains nothing."""
    from invemb.em.ablate import ablate_em

    _, cfg, _ = tiny_em_run
    root = tmp_path
    keys = ("backbone.path", "data_dir", "corpus.sources", "corpus.files", "corpus.dev_fraction",
            "corpus.test_fraction", "max_train_sentences", "max_dev_sentences", "dev_units")
    overrides = {k: _get(cfg, k) for k in keys}  # the fixture's tiny BERT, corpus and built data
    res = ablate_em("tiny", ["order"], 1, root / "abl", suite="order", eval_preset="tiny", overrides=overrides,
                    progress=False)
    table = res["table"]
    assert set(table["dev_recon_cos"]) == {"full", "no-order"}
    assert "order/order_discrimination" in table and set(table["order/order_discrimination"]) == {"full", "no-order"}
    saved = json.loads((root / "abl" / "no-order" / "config.json").read_text())["em"]
    assert saved["loss"]["order"] == 0 and saved["train"]["epochs"] == 1
    no_order_log = (root / "abl" / "no-order" / "metrics.jsonl").read_text()
    assert "loss_order" not in no_order_log and "loss_order" in (root / "abl" / "full" / "metrics.jsonl").read_text()
    md = (root / "abl" / "ablation.md").read_text()
    assert "| metric | full | no-order |" in md and "order/order_discrimination" in md
    assert (root / "abl" / "eval" / "results.json").exists()
    stamp = (root / "abl" / "full" / "final_metrics.json").stat().st_mtime_ns
    again = ablate_em("tiny", ["order"], 1, root / "abl", suite="order", eval_preset="tiny", overrides=overrides,
                      progress=False)
    assert (root / "abl" / "full" / "final_metrics.json").stat().st_mtime_ns == stamp
    assert again["table"]["dev_recon_cos"] == table["dev_recon_cos"]
    # Other settings into the same folder: refused, not kept under a table labelled with them.
    with pytest.raises(ValueError, match=r"abl/full was trained with other settings \(train.epochs\)"):
        ablate_em("tiny", ["order"], 2, root / "abl", suite="order", eval_preset="tiny", overrides=overrides,
                  progress=False)


def test_ablate_cli_refuses_bad_input(tmp_path):
    result = runner.invoke(app, ["ablate", "em", "--drop", "nope", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "unknown objective 'nope'" in result.output
    result = runner.invoke(app, ["ablate", "em", "--drop", "order", "--suite", "bogus", "--preset", "tiny",
                                 "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "unknown suite or evaluator 'bogus'" in result.output
    assert not (tmp_path / "a" / "full").exists()  # refused before any training


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
