"""Per-epoch history: the columns, the writer (CSV and JSONL next to the checkpoints, rewritten atomically
each epoch) and the reader the plots use."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .atomic import atomic_write

COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "dropout", "seconds", "best"]
NUMERIC = tuple(f for f in COLUMNS if f != "best")
REQUIRED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


class HistoryError(ValueError):
    """A history file is missing, empty or malformed (the message names it)."""


def history_paths(checkpoint_dir: str | os.PathLike, model: str) -> tuple[Path, Path]:
    d = Path(checkpoint_dir)
    return d / f"{model}_history.csv", d / f"{model}_history.jsonl"


def write_history(checkpoint_dir: str | os.PathLike, model: str, rows: list[dict]) -> tuple[Path, Path]:
    csv_path, jsonl_path = history_paths(checkpoint_dir, model)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write(csv_path, lambda f: f.write(buf.getvalue().encode()))
    atomic_write(jsonl_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return csv_path, jsonl_path


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a run's history from its CSV or JSONL file, numbers parsed, checked for the needed columns."""
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"history file not found: {path}")
    text = path.read_text()
    if not text.strip():
        raise HistoryError(f"history file is empty: {path}")
    try:
        if path.suffix == ".jsonl" or text.lstrip().startswith("{"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (json.JSONDecodeError, csv.Error) as exc:
        raise HistoryError(f"malformed history file {path}: {exc}") from None
    if not rows:
        raise HistoryError(f"history file has no epochs: {path}")
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or any(k not in r for k in REQUIRED):
            raise HistoryError(f"malformed history file {path}: row {i} lacks one of {', '.join(REQUIRED)}")
        try:
            row = {k: float(r[k]) for k in NUMERIC if k in r and r[k] not in (None, "")}
        except (TypeError, ValueError) as exc:
            raise HistoryError(f"malformed history file {path}: row {i}: {exc}") from None
        row["epoch"] = int(row["epoch"])
        out.append(row)
    return out
