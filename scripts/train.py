#!/usr/bin/env python
"""Train a CNN on an image dataset, or compare backends: ``python scripts/train.py --help``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn.cli import train_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(train_main())
