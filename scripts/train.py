#!/usr/bin/env python
"""Train a CNN on an image dataset, or compare backends: ``python scripts/train.py --help``."""

import os
import sys

# NumPy's OpenBLAS keeps its worker threads spinning after every matrix product; on a machine where
# another process holds a core, a step then waits on a worker whose core is taken.  Let them sleep
# at once (before NumPy loads OpenBLAS; a value set by the user wins), as bench.py does.
# docs/performance.md.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn.cli import train_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(train_main())
