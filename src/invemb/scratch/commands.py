"""CLI verbs of the scratch family: ``invemb train scratch`` and ``invemb compare moe``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import emit, user_errors

    compare_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Fair comparisons between model variants.\n\nExample: invemb compare moe --preset default --out runs/compare-moe")
    app.add_typer(compare_app, name="compare")

    @train_app.command("scratch")
    @user_errors
    def train_scratch_cmd(
        out: Path = typer.Option(..., "--out", help="run folder to write"),
        preset: str = typer.Option("default", "--preset", help="tiny | default | full"),
        moe: bool = typer.Option(False, "--moe", help="Mixture-of-Experts feed-forward in every moe.every-th block"),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="bpe | word (default: the preset's, bpe; word maps every word outside its vocabulary, emoji and other scripts included, to one [UNK])"),
        resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last checkpoint (killed before the first one: the loop from step 0)"),
        overrides: list[str] = typer.Option([], "--set", help="config override KEY=VALUE, e.g. model.depth=2"),
        plain: bool = typer.Option(False, "--plain", help="table instead of JSON"),
        quiet: bool = typer.Option(False, help="no progress bars"),
    ) -> None:
        """Train the from-scratch transformer encoder (dense or MoE) on corpus pairs.

        Example: invemb train scratch --preset default --moe --tokenizer bpe --out runs/scratch-moe
        """
        from invemb.config import parse_overrides
        from invemb.scratch.train import make_config, train_scratch

        cfg = make_config(preset, moe, tokenizer, parse_overrides(overrides))
        if quiet:
            cfg = cfg.replace(**{"train.progress": False})
        summary = train_scratch(cfg, out, resume=resume)
        emit(summary if not plain else {"run": summary["run"], **summary["eval"]}, plain)

    @compare_app.command("moe")
    @user_errors
    def compare_moe_cmd(
        out: Path = typer.Option(..., "--out", help="folder for dense/, moe/, compare.json and report.md"),
        preset: str = typer.Option("default", "--preset", help="tiny | default | full"),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="bpe | word (word: out-of-vocabulary words, emoji and other scripts become [UNK])"),
        overrides: list[str] = typer.Option([], "--set", help="config override KEY=VALUE for both models"),
        no_reference: bool = typer.Option(False, "--no-reference", help="skip the bundled MiniLM reference row"),
        plain: bool = typer.Option(False, "--plain", help="table instead of JSON"),
    ) -> None:
        """Train dense and MoE with equal active parameters, same data and steps; write report.md.
        Killed part-way, the same command again continues (finished runs kept, a started one resumed).

        Example: invemb compare moe --preset default --out runs/compare-moe
        """
        from invemb.config import parse_overrides
        from invemb.scratch.train import compare_moe

        result = compare_moe(preset, out, parse_overrides(overrides), tokenizer, reference=not no_reference)
        rows = [{"model": name, **m["retrieval"]} for name, m in result["models"].items()]
        emit(rows if plain else result, plain)
