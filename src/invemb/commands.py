"""Core verbs that belong to no single model family: corpus, vocab, encode, neighbours, demo."""
from __future__ import annotations

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:  # filled in by the EM work
    pass
