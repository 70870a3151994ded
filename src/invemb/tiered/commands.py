"""CLI verbs of the tiered family: ``invemb train tiered`` and ``invemb tiered probe``."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import emit, user_errors

    tiered_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Two-tier character -> semantic encoder tools.\n\nExample: invemb tiered probe --model runs/tiered --reference default")
    app.add_typer(tiered_app, name="tiered")

    @train_app.command("tiered")
    @user_errors
    def train_tiered_cmd(
        out: Path = typer.Option(..., "--out", help="run folder to write"),
        preset: str = typer.Option("default", "--preset", help="tiny | default | full"),
        resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last checkpoint (killed before the first one: the loop from step 0)"),
        overrides: list[str] = typer.Option([], "--set", help="config override KEY=VALUE, e.g. model.chunker.mode=learned"),
        plain: bool = typer.Option(False, "--plain", help="table instead of JSON"),
        quiet: bool = typer.Option(False, help="no progress bars"),
    ) -> None:
        """Train the two-tier encoder (E1 characters -> chunk bridge -> E2 meaning) on the bundled corpora
        (default preset: Wikipedia, WordNet examples, Brown, nlp-corpus; MiniLM distilled into E2; about 21 min here).

        Example: invemb train tiered --preset default --out runs/tiered --set model.chunker.mode=learned
        """
        from invemb.config import parse_overrides
        from invemb.tiered.train import TieredConfig, train_tiered

        cfg = TieredConfig.preset(preset).replace(**parse_overrides(overrides))
        if quiet:
            cfg = cfg.replace(**{"train.progress": False})
        summary = train_tiered(cfg, out, resume=resume)
        emit(summary if not plain else {"run": summary["run"], **summary["eval"]}, plain)

    @tiered_app.command("probe")
    @user_errors
    def probe_cmd(
        model: Path = typer.Option(..., "--model", help="a tiered run folder"),
        examples: int = typer.Option(5000, "--examples", help="WordNet example sentences to probe on (5000 finds 4,025)"),
        reference: str = typer.Option("", "--reference",
                                      help="also probe this HF encoder's word states (`default`: the bundled MiniLM)"),
        plain: bool = typer.Option(False, "--plain", help="table instead of JSON"),
    ) -> None:
        """Linear probes for the WordNet lexname of a word on E1 and on E2 states.

        Example: invemb tiered probe --model runs/tiered --reference default
        """
        from invemb.tiered.train import lexname_probe, load_run

        emit(lexname_probe(load_run(model), examples, reference or None), plain)
