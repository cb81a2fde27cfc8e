"""Per-epoch history written as CSV and JSONL next to the checkpoints (rewritten atomically each epoch)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .atomic import atomic_write

FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "dropout", "seconds", "best"]


def history_paths(checkpoint_dir: str | os.PathLike, model: str) -> tuple[Path, Path]:
    d = Path(checkpoint_dir)
    return d / f"{model}_history.csv", d / f"{model}_history.jsonl"


def write_history(checkpoint_dir: str | os.PathLike, model: str, rows: list[dict]) -> tuple[Path, Path]:
    csv_path, jsonl_path = history_paths(checkpoint_dir, model)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write(csv_path, lambda f: f.write(buf.getvalue().encode()))
    atomic_write(jsonl_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return csv_path, jsonl_path
