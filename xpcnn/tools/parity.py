"""Parity between backends: train the same model from the same host-initialised
weights on the same batches in the same order on each backend, then compare the
loss per epoch and every final parameter with the first backend's.

Default tolerances (``np.allclose``-style: |a - b| <= atol + rtol |b|, for every
parameter element and every epoch loss) come from measurements recorded in
docs/parity.md; ``rtol`` / ``atol`` override them.  :func:`compare_run` is ``xpcnn train
--compare``: the run assembled and checked as :mod:`xpcnn.training.run` does, then compared.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from xpcnn.backends import BACKENDS, Backend, BackendError, resolve, split_spec
from xpcnn.data import Dataset, Split
from xpcnn.io.files import write_json
from xpcnn.tools.lockstep import (
    DEFAULT_THRESHOLD,
    TargetError,
    format_lockstep,
    lockstep,
    make_target_executor,
    parse_target,
)
from xpcnn.training import Config, Extension, ProgressBar, StepExecutor, Trainer, build_model
from xpcnn.training.run import (
    RunOptions,
    Unavailable,
    UsageError,
    check_options,
    choose_executor,
    fit_to_data,
    load_data,
    run_config,
    training_count,
)

# Measured (docs/parity.md, default preset, embedded data): float64 runs of numpy, torch, jax,
# array_api_strict, cupy and torch on an H100 differ by at most 1.2e-15 per parameter element
# after 12 epochs on the CPU and 3.3e-16 after one on the GPU.  float32 runs do not settle it:
# a ReLU or max-pool decision that flips on a rounding difference is carried on by momentum, so
# after one epoch they differ by 2.6e-5, 4.1e-5 or 8.2e-3 depending only on where rounding fell
# (NumPy alone gives all three when the initial filters move by one ulp), and by 3.5e-2
# after 3 epochs, which says nothing about the backends.  Compare mode therefore defaults to
# float64 and one epoch; the float32 tolerance leaves ~25x headroom over the usual one-epoch figure.
DEFAULT_TOLERANCES = {"float64": {"rtol": 1e-8, "atol": 1e-10}, "float32": {"rtol": 1e-3, "atol": 1e-3}}
COMPARE_DTYPE = "float64"
COMPARE_EPOCHS = 1


def compare(specs: list[str], config: Config, train: Split, rtol: float | None = None, atol: float | None = None,
            on_backend: Callable[[str], object] | None = None, extensions: Sequence[Extension] = (),
            executor: Callable[[Backend], StepExecutor] | None = None) -> dict:
    """Train ``config`` on each backend spec (``'numpy'``, ``'torch:cuda'``,
    ``'array_api_strict:device1'`` ...) and return the parity report (a dict, JSON-ready).
    ``on_backend(spec)`` is called before each run; ``extensions`` (a progress bar, say) join each
    run; ``executor(backend)``, when given, makes each run's step executor (default: the plain step)."""
    if len(specs) < 2:
        raise ValueError("parity needs at least two backends, e.g. numpy,torch")
    tolerance = dict(DEFAULT_TOLERANCES[config.dtype])
    if rtol is not None:
        tolerance["rtol"] = rtol
    if atol is not None:
        tolerance["atol"] = atol
    targets = [parse_target(spec) for spec in specs]
    backends = [resolve(*split_spec(target.backend)) for target in targets]  # fail fast, before any training
    runs = []
    for spec, target, backend in zip(specs, targets, backends):
        if on_backend:
            on_backend(spec)
        chosen = (make_target_executor(target, backend) if target.executor else
                  executor(backend) if executor else None)
        with Trainer(config, backend, build_model(config), extensions=extensions, executor=chosen) as trainer:
            started = time.perf_counter()
            trainer.fit(train)
            label = backend.label + (spec[spec.index("@"):] if target.executor else "")
            runs.append({"backend": label, "seconds": time.perf_counter() - started,
                         "epoch_losses": [h["loss"] for h in trainer.state.history],
                         "step_losses": trainer.state.step_losses, "state": trainer.model.state_dict()})
    return _report(runs, config, tolerance)


def compare_run(options: RunOptions) -> dict:
    """Compare the backends of ``options.compare`` (``"numpy,torch"``) on the run ``options``
    describe (one epoch in float64 unless ``settings`` say otherwise), with the checks of
    :func:`~xpcnn.training.run.train` (a :class:`~xpcnn.training.run.UsageError` before any
    training); prints progress and the report, writes parity.json (and parity.png with ``plot``) into
    ``options.out``, and returns the report."""
    check_options(options)
    specs = [spec.strip() for spec in (options.compare or "").split(",") if spec.strip()]
    if len(specs) < 2:
        raise UsageError("--compare", f"--compare needs at least two backends, got {options.compare!r}")
    for spec in specs:
        try:
            name, device = split_spec(parse_target(spec).backend)
        except TargetError as exc:
            raise UsageError("--compare", f"--compare: {exc}") from None
        if name not in BACKENDS:
            raise UsageError("--compare", f"--compare: unknown backend {name!r} in {spec!r}; choose from "
                                          f"{', '.join(BACKENDS)}")
        try:
            resolve(name, device)
        except BackendError as exc:
            raise Unavailable("--compare", f"--compare {spec}: {exc}") from None
    if options.threshold is not None and not options.threshold > 0:
        raise UsageError("--threshold", f"--threshold must be a number > 0, got {options.threshold!r}")
    options = dataclasses.replace(options, settings={"epochs": COMPARE_EPOCHS, "dtype": COMPARE_DTYPE,
                                                     **options.settings})
    config = run_config(options)
    dataset = load_data(options.data, "--data", options.layout, options.classes)
    config, _ = fit_to_data(options, config, dataset)
    tolerances = options.rtol is not None or options.atol is not None
    if options.lockstep and tolerances:
        raise UsageError("--lockstep", "--lockstep judges differences by rounding (--threshold); --rtol/--atol are "
                                       "the tolerances of a whole-run comparison (--no-lockstep)")
    if options.lockstep or (options.lockstep is None and config.dtype == "float32" and not tolerances):
        return _lockstep_run(options, specs, config, dataset)
    print(f"parity: {', '.join(specs)}; preset {config.preset}, {config.dtype}, {config.epochs} epoch(s), "
          f"{training_count(config, dataset)} training images ({dataset.source})", flush=True)
    report = compare(specs, config, dataset.train, rtol=options.rtol, atol=options.atol,
                     on_backend=lambda spec: print(f"  training on {spec} ...", flush=True),
                     extensions=[] if options.quiet else [ProgressBar()],
                     executor=lambda backend: choose_executor(options, backend, compare=True))
    print(format_report(report))
    write_json(os.path.join(options.out, "parity.json"), report)
    if options.plot:
        from xpcnn.tools.plots import plot_parity

        plot_parity(report, os.path.join(options.out, "parity.png"))
    print(f"wrote {os.path.join(options.out, 'parity.json')}")
    return report


def _lockstep_run(options: RunOptions, specs: list[str], config: Config, dataset: Dataset) -> dict:
    """:func:`compare_run` in lockstep (:mod:`xpcnn.tools.lockstep`): prints, writes parity.json
    (and the heat map, parity.png, with ``plot``), returns the report."""
    if parse_target(specs[0]).executor:
        raise UsageError("--compare", f"--compare --lockstep: the first target is the reference and runs eagerly; "
                                      f"put {specs[0]!r} after it")
    print(f"parity (lockstep): {', '.join(specs)}; preset {config.preset}, {config.dtype}, {config.epochs} epoch(s), "
          f"{training_count(config, dataset)} training images ({dataset.source})", flush=True)
    report = lockstep(specs, config, dataset.train,
                      threshold=options.threshold if options.threshold is not None else DEFAULT_THRESHOLD,
                      on_target=lambda spec: print(f"  preparing {spec} ...", flush=True),
                      extensions=[] if options.quiet else [ProgressBar()])
    print(format_lockstep(report))
    write_json(os.path.join(options.out, "parity.json"), report)
    if options.plot:
        from xpcnn.tools.plots import plot_lockstep

        plot_lockstep(report, os.path.join(options.out, "parity.png"))
    print(f"wrote {os.path.join(options.out, 'parity.json')}")
    return report


def _report(runs: list[dict], config: Config, tolerance: dict) -> dict:
    reference, rtol, atol = runs[0], tolerance["rtol"], tolerance["atol"]
    comparisons, ok = [], True
    for run in runs[1:]:
        params = {}
        for name, ref in reference["state"].items():
            ref64, other = ref.astype(np.float64), run["state"][name].astype(np.float64)
            diff = np.abs(other - ref64)
            passed = bool(np.all(diff <= atol + rtol * np.abs(ref64)))
            params[name] = {"max_abs_diff": float(diff.max()),
                            "max_rel_diff": float((diff / np.maximum(np.abs(ref64), 1e-30)).max()),
                            "pass": passed}
        ref_losses, losses = np.array(reference["epoch_losses"]), np.array(run["epoch_losses"])
        loss_diff = np.abs(losses - ref_losses)
        loss_pass = bool(np.all(loss_diff <= atol + rtol * np.abs(ref_losses)))
        run_pass = loss_pass and all(p["pass"] for p in params.values())
        ok = ok and run_pass
        comparisons.append({"backend": run["backend"], "against": reference["backend"], "pass": run_pass,
                            "epoch_loss_abs_diff": loss_diff.tolist(), "loss_pass": loss_pass, "parameters": params})
    return {
        "result": "PASS" if ok else "FAIL",
        "dtype": config.dtype, "rtol": rtol, "atol": atol,
        "config": {k: v for k, v in vars(config).items()},
        "backends": [{"backend": r["backend"], "seconds": r["seconds"], "epoch_losses": r["epoch_losses"],
                      "step_losses": r["step_losses"]} for r in runs],
        "comparisons": comparisons,
    }


def format_report(report: dict) -> str:
    """The human-readable table."""
    lines = []
    names = [b["backend"] for b in report["backends"]]
    epochs = len(report["backends"][0]["epoch_losses"])
    lines.append("loss per epoch")
    lines.append("  epoch  " + "  ".join(f"{n:>24}" for n in names) + "  " +
                 "  ".join(f"{'|diff| ' + n:>30}" for n in names[1:]))
    for e in range(epochs):
        row = "  ".join(f"{b['epoch_losses'][e]:24.12g}" for b in report["backends"])
        diffs = "  ".join(f"{c['epoch_loss_abs_diff'][e]:30.3e}" for c in report["comparisons"])
        lines.append(f"  {e + 1:5d}  {row}  {diffs}")
    for comparison in report["comparisons"]:
        lines.append("")
        lines.append(f"parameters: {comparison['backend']} vs {comparison['against']}")
        width = max([12] + [len(name) for name in comparison["parameters"]])
        lines.append(f"  {'name':<{width}} {'max |diff|':>12} {'max rel diff':>14}  result")
        for name, p in comparison["parameters"].items():
            lines.append(f"  {name:<{width}} {p['max_abs_diff']:12.3e} {p['max_rel_diff']:14.3e}  "
                         f"{'PASS' if p['pass'] else 'FAIL'}")
        lines.append(f"  losses: {'PASS' if comparison['loss_pass'] else 'FAIL'}")
    seconds = ", ".join(f"{b['backend']} {b['seconds']:.1f}s" for b in report["backends"])
    lines.append("")
    lines.append(f"parity {report['result']} ({report['dtype']}, rtol={report['rtol']:g}, atol={report['atol']:g}; "
                 f"{seconds})")
    return "\n".join(lines)

