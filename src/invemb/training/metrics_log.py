"""Append-only JSONL metric log: one object per step or epoch, flushed as written."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def clear(self) -> None:
        """A run that starts at step 0 (also one killed before its first checkpoint) starts a fresh log."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows written after the checkpoint so the log has no duplicates."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        from invemb.io import write_jsonl

        write_jsonl(self.path, kept)

    def write(self, kind: str, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, **{k: _clean(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


def series(rows: list[dict[str, Any]], key: str) -> Iterator[tuple[int, float]]:
    for r in rows:
        if r.get(key) is not None:
            yield r.get("step", 0), r[key]
