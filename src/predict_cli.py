#!/usr/bin/env python3
"""Entry point: `uv run src/predict_cli.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn_cifar.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
