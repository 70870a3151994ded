"""EM verbs: train em, demo, neighbours, index-free encode lives in invemb.commands."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from invemb.cli import emit, user_errors


def _em_config(preset: str, backbone: Optional[str], overrides: List[str]):
    from invemb.config import parse_overrides
    from invemb.em.config import EMConfig

    cfg = EMConfig.preset(preset)
    if backbone:
        cfg = cfg.replace(**{"backbone.path": backbone})
    if overrides:
        cfg = cfg.replace(**parse_overrides(overrides))
    return cfg


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @train_app.command("em")
    @user_errors
    def train_em_cmd(
        preset: str = typer.Option("default", help="tiny | default | full"),
        out: Path = typer.Option(None, help="run folder (default: runs/em-PRESET)"),
        backbone: Optional[str] = typer.Option(None, help="local Hugging Face encoder folder (default: bundled all-MiniLM-L6-v2)"),
        resume: bool = typer.Option(False, "--resume", help="continue a killed run with its own config (--preset / --set ignored) from its last checkpoint (killed earlier: its cached features, loop from step 0)"),
        set_: List[str] = typer.Option([], "--set", help="config override KEY=VALUE, e.g. loss.order=0 train.epochs=2"),
        quiet: bool = typer.Option(False, help="no progress bars"),
    ):
        """Train the EM head on cached backbone features.

        Example: invemb train em --preset default --out runs/em-default
        """
        from invemb.em.train import train_em

        cfg = _em_config(preset, backbone, set_)
        result = train_em(cfg, out or Path(f"runs/em-{preset}"), resume=resume, progress=not quiet)
        emit(result)

    @app.command("order-bind")
    @user_errors
    def order_bind_cmd(
        em: Path = typer.Option(..., help="the EM run folder"),
        out: Path = typer.Option(..., help="run folder to write (load it with invemb.load, evaluate it with invemb eval -e)"),
        preset: str = typer.Option("default", help="tiny | default | full"),
        set_: List[str] = typer.Option([], "--set", help="OrderBindConfig override KEY=VALUE: width, share, center, max_positions, "
                                                          "binding (positions | pairs), codes (auto | identity | em), seed"),
    ):
        """Write an order-bound view of an EM run: its vector plus a part that binds each word to its position (no
        training, seconds). Each word binds a fixed random code weighted by its IDF: order discrimination 0.953-0.970
        on three probe sets against the EM's 0.858-0.886, with retrieval nearly the EM's (README "Order binding";
        `--set share=0.4` keeps more of it). With `--set binding=pairs` each word's own EM vector is bound to the next
        word instead (order 0.917), and a controller of the EM inverts the view's vectors better than the EM's own
        (README "Inverting an order-bound view").

        Example: invemb order-bind --em runs/em-default --out runs/em-ordered

        Then: invemb eval -e runs/em-default -e runs/em-ordered --suite order,retrieval --plain

        For inversion: invemb order-bind --em runs/em-default --out runs/em-pairs --set binding=pairs;
        invemb invert "The cat sat on the mat." --em runs/em-pairs --controller runs/ctl-default
        """
        from invemb.config import parse_overrides
        from invemb.em.order_bind import OrderBindConfig, build_run

        cfg = OrderBindConfig.preset(preset).replace(**parse_overrides(set_))
        emit(build_run(em, out, cfg))

    @app.command("neighbours")
    @user_errors
    def neighbours_cmd(
        text: List[str] = typer.Argument(..., help="words, phrases or sentences"),
        model: Path = typer.Option(..., help="EM run folder"),
        k: int = typer.Option(10, "-k", help="neighbours per query"),
        plain: bool = typer.Option(False, help="a table instead of JSON"),
    ):
        """Nearest vocabulary units of a word, phrase or sentence.

        Example: invemb neighbours bank "New York" "not good" --model runs/em-default -k 10
        """
        from invemb.em.probe import neighbours

        result = neighbours(model, list(text), k)
        if plain:
            for q, items in result.items():
                typer.echo(f"{q}: " + ", ".join(f"{u} ({s:.3f})" for u, s in items))
        else:
            emit({q: [{"unit": u, "cosine": round(s, 4)} for u, s in items] for q, items in result.items()})

    @app.command("demo")
    @user_errors
    def demo_cmd(
        preset: str = typer.Option("default", help="tiny | default | full"),
        out: Path = typer.Option(None, help="run folder (default: runs/em-PRESET)"),
        inversion: bool = typer.Option(True, "--inversion/--no-inversion",
                                       help="go on to train an inversion controller and invert held-out sentences"),
        controller_out: Path = typer.Option(None, help="controller run folder (default: runs/controller-PRESET)"),
    ):
        """The main job: corpus -> vocabulary -> lexicon -> features -> train EM -> report -> the EM's order-bound
        view (RUN-ordered) and its order discrimination, then train the inversion controller on the EM and rebuild
        held-out sentences from their vectors.
        Run again after a kill, it continues where it stopped (cached data and features, checkpoints).

        \b
        Example: invemb demo --preset default --out runs/em-default
        Example: invemb demo --preset tiny --out runs/em-tiny --no-inversion
        """
        from invemb.em.probe import demo

        ctrl = (controller_out or Path(f"runs/controller-{preset}")) if inversion else None
        demo(preset, out or Path(f"runs/em-{preset}"), controller_out=ctrl)

    ablate_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                             help="Ablations: what each objective buys, one short run per dropped term.\n\n"
                                  "Example: invemb ablate em --preset tiny --drop order --epochs 2 --suite order --out runs/ablate-tiny")
    app.add_typer(ablate_app, name="ablate")

    @ablate_app.command("em")
    @user_errors
    def ablate_em_cmd(
        drop: List[str] = typer.Option(["recon,sem,syn,ant,order,unit,queue"], "--drop",
                                       help="objectives to drop, one run each: contrastive, ant, syn, recon, sem "
                                            "(semantic anchor), queue, order, unit (comma list or repeat)"),
        epochs: int = typer.Option(1, help="epochs of every run (the full one included)"),
        preset: str = typer.Option("default", help="tiny | default | full"),
        out: Path = typer.Option(Path("runs/ablate-em"), help="folder for one run per term, eval/, ablation.md"),
        suite: str = typer.Option("word,order", help="evaluation suite run over all the runs (see `invemb eval`)"),
        eval_preset: str = typer.Option(None, help="data sizes of the suite (default: the same preset)"),
        set_: List[str] = typer.Option([], "--set", help="EM config override KEY=VALUE for every run"),
        quiet: bool = typer.Option(False, help="no progress bars"),
        plain: bool = typer.Option(False, "--plain", help="print the markdown table instead of JSON"),
    ):
        """Train the full EM and one EM per dropped objective (same data, seed, steps), evaluate them
        together and tabulate every metric against the full model. Run it again to finish a killed one.

        \b
        Example: invemb ablate em --drop recon,sem,syn,ant,order,unit,queue --epochs 1 --out runs/ablate-em
        Example: invemb ablate em --preset tiny --drop order --epochs 2 --suite order --out runs/ablate-tiny
        """
        from invemb.config import parse_overrides
        from invemb.em.ablate import ablate_em, parse_drop

        names = parse_drop(drop)
        result = ablate_em(preset, names, epochs, out, suite, eval_preset or preset, parse_overrides(set_),
                           progress=not quiet)
        if plain:
            typer.echo(Path(result["files"]["markdown"]).read_text())
        else:
            emit(result)
