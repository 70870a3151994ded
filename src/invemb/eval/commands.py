"""The ``invemb eval`` verb: run a suite over one or more encoders and write the report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


# `invemb eval --encoder X ...` runs the suite; `invemb eval inversion ...` (registered by the
# inversion family) compares the controller with its baselines.
eval_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None)


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import emit, user_errors

    app.add_typer(eval_app, name="eval")

    @eval_app.callback()
    @user_errors
    def eval_cmd(
        ctx: typer.Context,
        encoder: List[str] = typer.Option([], "--encoder", "-e", help="run folder, backbone folder, or `backbone` (repeat)"),
        suite: str = typer.Option("all", help="all | word | sts | retrieval | order | relations | classification | typo | "
                                              "stats | inversion, an evaluator name, or a comma list"),
        out: Optional[Path] = typer.Option(None, help="folder for results.json, report.md and plots/"),
        preset: str = typer.Option("default", help="tiny | default | full (data sizes)"),
        set_: List[str] = typer.Option([], "--set", help="EvalConfig override key=value (repeat)"),
        vocab: Optional[Path] = typer.Option(None, help="a Vocab JSON: units for purity, OOV and plots"),
        controller: Optional[Path] = typer.Option(None, help="a controller run for the inversion evaluator"),
        plain: bool = typer.Option(False, "--plain", help="print a table of primary metrics instead of JSON"),
        runtime: str = typer.Option("torch", help="runtime: torch | onnx (onnxruntime, CPU; EM runs and HF folders) | bf16 (bfloat16 where the hardware has it: the backbone of EM runs and HF folders, the whole model of scratch and tiered runs)"),
    ):
        """Evaluate encoders side by side; prints the primary metrics. `invemb eval inversion` measures
        an inversion controller against its baselines.

        \b
        Example: invemb eval --encoder backbone --encoder runs/em --suite all --out reports/em-vs-backbone
        Example: invemb eval inversion --em runs/em-default --controller runs/controller-default --n 50
        """
        if ctx.invoked_subcommand is not None:
            return
        from invemb.config import parse_overrides
        from invemb.eval.suite import EvalConfig, evaluate, name_encoders, suite_names

        cfg = EvalConfig.preset(preset).replace(**parse_overrides(set_))
        if vocab:
            cfg = cfg.replace(vocab=str(vocab))
        if controller:
            cfg = cfg.replace(controller=str(controller))
        suite_names(suite)  # refuse an unknown suite, a missing file or a bad --out before loading any model
        cfg.check_paths(out)
        import functools

        import invemb

        results = evaluate(name_encoders(encoder, load=functools.partial(invemb.load, runtime=runtime)), suite, cfg, str(out) if out else None)
        rows = [{"evaluator": ev, "metric": results["primary"][ev],
                 **{col: m.get(results["primary"][ev], float("nan")) for col, m in per.items()}}
                for ev, per in results["results"].items()]
        rows += [{"evaluator": ev, "metric": "not run", "reason": why} for ev, why in results["not_run"].items()]
        emit(rows if plain else {"primary": rows, "files": results.get("files", {})}, plain)
