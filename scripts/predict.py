#!/usr/bin/env python
"""Classify images with a checkpoint trained by xpcnn: ``python scripts/predict.py --help``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn.cli import predict_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(predict_main())
