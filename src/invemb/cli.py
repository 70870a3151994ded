"""The ``invemb`` command: thin verbs over the library.

Each command parses its options, calls one library function and prints JSON (or a table with
``--plain``). A user error exits non-zero with one readable line, no traceback. Commands of a
model family live beside it (``invemb/<family>/commands.py``) and register themselves here.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="invemb: invertible text embeddings (words, phrases, sentences in one space).")
train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=(
    "Train a model into a run folder.\n\nExample: invemb train em --preset default --out runs/em-default\n\n"
    "Several processes (DDP; gloo on CPU, nccl on GPUs): torchrun --standalone --nproc_per_node 2 "
    "$(which invemb) train em --preset tiny --out runs/em-ddp. Two processes with grad_accum A follow one "
    "process with 2*A; only rank 0 writes; --resume needs the same number of processes."))
app.add_typer(train_app, name="train")

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, KeyError, TypeError,
               PermissionError)


def user_errors(fn: Callable) -> Callable:
    """Turn library errors from bad input into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as err:
            typer.echo(f"error: {error_line(err)}", err=True)
            raise typer.Exit(2)

    return wrapper


def error_line(err: BaseException) -> str:
    """One line for a user error: a KeyError's key without repr quotes, an OS error as 'path: reason'."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    elif isinstance(err, OSError) and err.filename and err.strerror:
        msg = f"{err.filename}: {err.strerror}"
    else:
        msg = str(err)
    lines = msg.strip().splitlines()
    return lines[0] if lines else type(err).__name__


def emit(obj: Any, plain: bool = False) -> None:
    """Print JSON, or a simple aligned table for a dict / list of dicts with ``--plain``.
    Under torchrun only rank 0 prints (the other ranks' results are the same run)."""
    if os.environ.get("RANK", "0") != "0":
        return
    if not plain:
        typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
        return
    rows = obj if isinstance(obj, list) else [obj]
    if rows and all(isinstance(r, dict) for r in rows):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
        widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
        typer.echo("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            typer.echo("  ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys))
    else:
        typer.echo(str(obj))


def _register_all() -> None:
    from invemb.commands import register as register_core

    register_core(app, train_app)
    import importlib
    import importlib.util

    # Each model family that is present registers its own verbs.
    for family in ("em", "eval", "scratch", "tiered", "inversion", "serve"):
        name = f"invemb.{family}.commands"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(app, train_app)


_register_all()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
