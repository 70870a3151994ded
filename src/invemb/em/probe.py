"""Looking at a trained EM: nearest units, and the demo that trains one and prints what it learned."""
from __future__ import annotations

import json
from pathlib import Path

PROBES = ["bank", "New York", "not good", "prime minister", "happy", "1990s"]


def neighbours(run: str | Path, texts: list[str], k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Nearest vocabulary units of each text, from the run's FAISS index over all unit vectors."""
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    from invemb.em.train import load_run
    from invemb.index.faiss_index import UnitIndex

    run = Path(run)
    config = run / "config.json"
    if config.exists() and json.loads(config.read_text(encoding="utf-8")).get("kind") == "order_bind":
        from invemb.em.order_bind import em_run

        raise ValueError(f"{run} is an order-bound view of the EM run {em_run(run)}, which holds the unit index "
                         f"(a word's neighbours are the same in both): --model {em_run(run)}")
    model = load_run(run)
    index = UnitIndex.load(run / "index")
    vecs = model.encode(texts)
    return dict(zip(texts, index.neighbours(vecs, k)))


def demo(preset: str, out: Path, controller_out: Path | None = None, n_invert: int = 6) -> dict:
    """Train (or finish) the EM of ``preset`` into ``out`` and print a short report; with
    ``controller_out``, go on to train an inversion controller on it and invert held-out sentences.
    A demo killed part-way continues where it stopped when run again."""
    import typer

    from invemb.em.config import EMConfig
    from invemb.em.train import train_em

    out = Path(out)
    if (out / "final_metrics.json").exists():
        typer.echo(f"{out} is already trained; showing its report (delete the folder to retrain)")
    else:
        # config.json is written once the features are cached: from there on a killed demo continues its run
        train_em(EMConfig.preset(preset), out, resume=(out / "config.json").exists())
    final = json.loads((out / "final_metrics.json").read_text())
    backbone = json.loads((out / "backbone_metrics.json").read_text())
    typer.echo("\n== nearest units ==")
    for q, items in neighbours(out, PROBES, 8).items():
        typer.echo(f"{q:>15}: " + ", ".join(f"{u} ({s:.2f})" for u, s in items))
    typer.echo("\n== held-out metrics: raw backbone -> EM ==")
    for k, v in final.items():
        if k.startswith("dev_") and isinstance(v, float):
            b = backbone.get(k)
            typer.echo(f"{k:>40}: " + (f"{b:.3f} -> " if isinstance(b, float) else "      -> ") + f"{v:.3f}")
    typer.echo(f"\ntimings: data {final['data_s']:.0f}s, features {final['features_s']:.0f}s, train {final['train_s']:.0f}s, "
               f"total {final['total_s']:.0f}s")
    typer.echo(f"run folder: {out} (report.md, metrics.jsonl, plots/, index/, st/)")
    from invemb.eval.data import wiki_sentences
    from invemb.eval.order import OrderEvaluator
    from invemb.eval.suite import EvalConfig

    n = EvalConfig.preset(preset).order_sentences  # the eval suite's own probe sentences
    final["order_view"] = demo_order_view(out, OrderEvaluator(wiki_sentences(n, 0)), preset)
    if controller_out is not None:
        final["inversion"] = demo_inversion(EMConfig.preset(preset), out, Path(controller_out), preset, n_invert)
    return final


def demo_order_view(em_run: Path, evaluator, preset: str = "default") -> dict:
    """Write the order-bound view of ``em_run`` beside it (``{em_run}-ordered``, README "Order binding"; seconds,
    no training) and print the order discrimination of the EM and of the view on ``evaluator``'s probes (an
    :class:`invemb.eval.order.OrderEvaluator`)."""
    import torch
    import typer

    from invemb.em.order_bind import OrderBindConfig, build_view
    from invemb.eval.base import MemoEncoder

    view = build_view(em_run, OrderBindConfig.preset(preset))
    view_run = Path(f"{em_run}-ordered")
    view.save(view_run)  # written each time, so it is the view of this EM run
    memo = MemoEncoder(view.em)  # the view's EM part is the EM's vector: each text is encoded once for both
    with torch.no_grad():
        em, ordered = evaluator(memo), evaluator(view.over(memo))
    summary = {"run": str(view_run), "em": em["order_discrimination"], "view": ordered["order_discrimination"],
               "probes": int(ordered["n_probes"])}
    typer.echo(f"\n== word order: the EM and its order-bound view {view_run} (invemb order-bind, no training) ==")
    typer.echo(f"order discrimination on {summary['probes']} held-out sentences (a swap of two words moves the vector "
               f"further than a synonym): EM {summary['em']:.3f} -> view {summary['view']:.3f}")
    return summary


def demo_inversion(cfg, em_run: Path, controller_out: Path, preset: str, n: int = 6) -> dict:
    """Train (or finish) a controller on the EM run, then invert ``n`` held-out Wikipedia sentences
    and print them beside the originals."""
    import typer

    from invemb.em.data import corpus_dir
    from invemb.inversion import load_run
    from invemb.inversion.harness import eval_sentences
    from invemb.inversion.metrics import summarise
    from invemb.inversion.train import ControllerTrainConfig, train_controller

    corpus = corpus_dir(cfg)  # the corpus the EM was trained from; its test split is held out from both
    if not (controller_out / "model.safetensors").exists():  # written last, once training has finished
        ccfg = ControllerTrainConfig.preset(preset).replace(corpus=str(corpus))
        resume = (controller_out / "config.json").exists()  # started: killed while building states or training
        train_controller(str(em_run), ccfg, controller_out, resume=resume, preset=preset)
    if not (controller_out / "extra_units" / "index.json").exists():  # written last
        from invemb.inversion.extra import ExtraUnitsConfig, add_extra_units

        typer.echo("\n== adding the words the vocabulary lacks (invemb index words; about 6 minutes) ==")
        added = add_extra_units(controller_out, ExtraUnitsConfig.preset(preset))
        typer.echo(f"{added['extra_units']} words beside the {added['vocabulary']} units the controller was trained on")
    ctrl = load_run(controller_out, em=str(em_run))
    sentences = eval_sentences(corpus, "wiki", n)

    def show(rows: list[dict]) -> dict:
        for r in rows:
            typer.echo(f"  original: {r['text']}\n   rebuilt: {r['reconstruction']}   (cos {r['cosine']:.3f})")
        summary = summarise(rows)
        typer.echo(f"token F1 {summary['token_f1']:.1f}, BLEU {summary['bleu']:.1f}, cosine {summary['cosine']:.3f}, "
                   f"{summary['encoder_calls']:.0f} encoder calls and {summary['seconds']:.2f} s per sentence")
        return summary

    typer.echo("\n== inversion of held-out sentences (from the sentence vector only) ==")
    summary = show(ctrl.invert_texts(sentences, progress=False))
    # The same sentences from a pair-bound view's vector (README "Inverting an order-bound view"): no training,
    # the same controller, the order read off the vector's word pairs.
    from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder

    view = OrderBoundEncoder.build(ctrl.encoder.encoder, OrderBindConfig(binding="pairs"),
                                   ctrl.unit_vectors[:ctrl.trained_units], em_path=str(em_run))  # the EM run's own units
    view_run = Path(f"{em_run}-pairs")
    view.save(view_run)  # seconds; written each time, so it is the view of this EM run
    typer.echo(f"\n== the same sentences from the vectors of the pair-bound view {view_run} (invemb order-bind "
               "--set binding=pairs), the same controller ==")
    summary["view"] = show(load_run(controller_out, em=view).invert_texts(sentences, progress=False))
    typer.echo(f"controller run: {controller_out}; `invemb eval inversion` measures it on more sentences "
               f"(`--em {view_run}`: the view's)")
    return summary
