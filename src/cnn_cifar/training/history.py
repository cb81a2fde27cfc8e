"""Per-epoch history written as CSV and JSONL next to the checkpoints (rewritten atomically each epoch)."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "dropout", "seconds", "best"]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _atomic_write(csv_path, buf.getvalue())
    _atomic_write(jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))
    return csv_path, jsonl_path
