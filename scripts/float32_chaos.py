#!/usr/bin/env python
"""How far apart two float32 trainings of the default network end after one epoch when they
differ only by rounding: NumPy against NumPy with one-ulp changes to the initial filters.

Every backend rounds a little differently (it sums in another order).  This script shows the
spread that such differences alone produce, on one backend, which is why a free-running
float32 comparison of two backends says nothing about them, and why ``scripts/train.py --compare
A,B --dtype float32`` runs in lockstep instead: every step from the same state, each layer's result
judged against rounding (docs/parity.md).

  python scripts/float32_chaos.py --perturbations 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data, resolve, to_numpy  # noqa: E402
from xpcnn.training import PRESETS, Trainer, build_model  # noqa: E402
from xpcnn.training.executors import WholeBatchStep  # noqa: E402


def train(config, train_split, nudge_seed: int | None) -> dict:
    """One epoch on NumPy; with ``nudge_seed``, every initial filter entry first moves one ulp up or down."""
    model = build_model(config)
    if nudge_seed is not None:
        weight = np.asarray(dict(model.named_parameters())["0.weight"], np.float32)
        up = np.random.default_rng(nudge_seed).random(weight.shape) < 0.5
        model.set_parameter("0.weight", np.nextafter(weight, np.where(up, np.inf, -np.inf).astype(np.float32)))
    trainer = Trainer(config, resolve("numpy"), model=model, executor=WholeBatchStep())  # the plain step
    trainer.fit(train_split)
    return {name: to_numpy(value) for name, value in trainer.model.named_parameters()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--perturbations", type=int, default=8, help="how many nudged runs (default 8)")
    args = parser.parse_args(argv)
    if args.perturbations < 1:
        parser.error("--perturbations must be >= 1")
    config = dataclasses.replace(PRESETS["default"], epochs=1)
    train_split = data.load_embedded().train
    reference = train(config, train_split, None)
    print("default preset, float32, 1 epoch on NumPy; max |difference| from the un-nudged run")
    print(f"  {'nudge seed':<11}" + "".join(f"{name:>12}" for name in reference))
    for seed in range(args.perturbations):
        nudged = train(config, train_split, seed)
        print(f"  {seed:<11}" + "".join(f"{np.max(np.abs(nudged[k] - reference[k])):12.2e}" for k in reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
