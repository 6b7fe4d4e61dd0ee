"""``scripts/train.py``: train on MNIST with any backend, compare backends for parity,
checkpoint and resume.  Exit status: 0 done (parity PASS), 1 parity FAIL,
2 usage error (bad flag, missing backend or GPU, unreadable data, unwritable --out),
3 training diverged, 4 a checkpoint or data file failed mid-run, 130 / 143
interrupted by SIGINT / SIGTERM after saving a resumable checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import data as datasets
from . import parity as parity_mod
from .backend import BACKENDS, BackendError, DTYPES, parse_spec, resolve
from .checkpoint import CheckpointError
from .files import check_writable_dir, write_json
from .hostmem import keep_freed_memory
from .training import PRESETS, Config, Diverged, Interrupted, Trainer, confusion_matrix

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DIVERGED, EXIT_IO = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train xpcnn's CNN on MNIST on any array backend, or compare backends for parity.",
        epilog="examples:\n"
               "  python scripts/train.py                                   # embedded MNIST, NumPy, CPU\n"
               "  python scripts/train.py --eval-data ../shared/data/mnist  # + real MNIST test accuracy\n"
               "  python scripts/train.py --device cuda                     # CuPy on the GPU\n"
               "  python scripts/train.py --preset article                  # the article's network\n"
               "  python scripts/train.py --compare numpy,torch --dtype float64\n"
               "  python scripts/train.py --resume runs/latest/checkpoint.npz --epochs 20\n\n" + __doc__.split("\n\n", 1)[0])
    p.add_argument("--backend", choices=BACKENDS, help="array library (default numpy; cupy when --device cuda)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or an array_api_strict device (device1, device2)")
    p.add_argument("--data", default="embedded",
                   help="'embedded' (5,000 digits in the package), an IDX folder, a mnist.npz, or 'download'")
    p.add_argument("--eval-data", help="IDX folder or .npz whose test split gives the final test accuracy")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="'default': conv 5x5x16-ReLU-maxpool-dense-softmax, 10 classes; 'article': the article's network")
    p.add_argument("--task", choices=datasets.TASKS, help="binary (digit > 4, the article's) or multiclass")
    p.add_argument("--epochs", type=int, help="passes over the training data (preset default; compare mode: 1)")
    p.add_argument("--batch-size", type=int, help="images per gradient step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-decay", type=float,
                   help="multiply the learning rate by this each epoch (default preset 0.8, article 1.0)")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), help="sgd (the article's rule), momentum, adam")
    p.add_argument("--momentum", type=float, help="momentum for --optimizer momentum (default 0.9)")
    p.add_argument("--init", choices=("uniform", "glorot", "he"),
                   help="weight initialiser (preset default: article uniform U[0,1), default he)")
    p.add_argument("--seed", type=int, help="seed for weights, batch order and augmentation (default 0)")
    p.add_argument("--dtype", choices=DTYPES, help="float32 (default) or float64 (default of --compare)")
    p.add_argument("--out", default=os.path.join("runs", "latest"), help="folder for metrics.json, checkpoint.npz, plots")
    p.add_argument("--plot", action="store_true", help="write PNG plots into --out (needs matplotlib: xpcnn[plot])")
    p.add_argument("--compare", metavar="SPECS",
                   help="comma-separated backends to compare, e.g. numpy,torch or numpy,cupy or numpy,array_api_strict:device1")
    p.add_argument("--rtol", type=float, help="parity relative tolerance (default per dtype, see docs/parity.md)")
    p.add_argument("--atol", type=float, help="parity absolute tolerance (default per dtype)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint.npz (any backend)")
    p.add_argument("--threads", type=int, default=1,
                   help="split each batch over this many threads (CPU backends; the same step up to float "
                        "rounding, BLAS then runs one thread each; default 1)")
    p.add_argument("--chunk", type=int, metavar="N",
                   help="run each batch as pieces of at most N images, gradients summed (the same step up to "
                        "float rounding; faster on a CPU once a batch's arrays outgrow the cache, "
                        "docs/performance.md; default: whole batches)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if args.lr_decay is not None and not 0 < args.lr_decay <= 1:
        p.error(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        p.error(f"--momentum must be in [0, 1), got {args.momentum}")
    for name in ("rtol", "atol"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            p.error(f"--{name} must be a non-negative number, got {value}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.chunk is not None and args.chunk < 1:
        p.error(f"--chunk must be >= 1, got {args.chunk}")
    if args.threads != 1 and ((args.device or "").startswith("cuda") or args.backend == "cupy"):
        p.error("--threads splits each batch over CPU cores; drop it for a GPU")
    if args.compare and (args.threads != 1 or args.chunk):
        p.error("--compare runs each backend on whole batches, single-threaded; drop --threads/--chunk")
    if args.compare and args.resume:
        p.error("--compare and --resume cannot be combined")
    if args.compare and (args.backend or args.device):
        p.error("--compare names its own backends; drop --backend/--device")
    problem = check_writable_dir(args.out)
    if problem:
        p.error(f"--out: {problem}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib; install the 'plot' extra: pip install 'xpcnn[plot]'")


def _config(args, base: Config | None = None) -> Config:
    config = base or PRESETS[args.preset]
    overrides = {k: v for k, v in dict(task=args.task, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                                       optimizer=args.optimizer, momentum=args.momentum, seed=args.seed, init=args.init,
                                       dtype=args.dtype).items() if v is not None}
    if base is not None:  # resuming: only the length of the run may change
        changed = [k for k, v in overrides.items() if k != "epochs" and getattr(base, k) != v]
        if changed:
            raise ValueError("--resume continues the checkpoint's run; only --epochs may change, not "
                             + ", ".join(f"--{k.replace('_', '-')} ({getattr(base, k)} in the checkpoint)" for k in changed))
        overrides = {k: v for k, v in overrides.items() if k == "epochs"}
    config = dataclasses.replace(config, **overrides)
    if config.task == "binary" and config.loss == "softmax_ce":
        config = dataclasses.replace(config, loss="bce")
    if config.task == "multiclass" and config.loss != "softmax_ce":
        config = dataclasses.replace(config, loss="softmax_ce")
    return config


class Progress:
    """A one-line progress bar per epoch on stderr (only redrawn on a terminal)."""

    def __init__(self, epochs: int, enabled: bool):
        self.epochs, self.enabled = epochs, enabled and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, epoch, step, steps, running_loss):
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and step < steps):
            return
        self.last = now
        filled = int(30 * step / steps)
        sys.stderr.write(f"\repoch {epoch}/{self.epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{step}/{steps} loss {running_loss:.4f}")
        if step == steps:
            sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()


def _print_epoch(record, epochs):
    val = (f"  val loss {record.val_loss:.4f}  val acc {100 * record.val_accuracy:5.2f}%"
           if record.val_accuracy is not None else "")
    print(f"epoch {record.epoch:3d}/{epochs}  loss {record.loss:.4f}{val}  "
          f"{record.images_per_s:8.0f} img/s  {record.seconds:5.1f}s", flush=True)


def _format_confusion(matrix: np.ndarray) -> str:
    classes = matrix.shape[0]
    lines = ["confusion matrix (rows: true, columns: predicted)",
             "      " + "".join(f"{c:>6d}" for c in range(classes))]
    lines += [f"{r:>6d}" + "".join(f"{v:>6d}" for v in matrix[r]) for r in range(classes)]
    return "\n".join(lines)


def _install_signal_handlers(trainer: Trainer) -> dict:
    caught = {}

    def handler(signum, frame):
        caught["signal"] = signum
        trainer.stop_requested = True
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
    return caught


def _one_line_error(p: argparse.ArgumentParser, message: str) -> int:
    """A missing backend or GPU: one line (no usage block, the flags were fine), status 2."""
    print(f"{p.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _load_data(p, spec: str, flag: str):
    try:
        return datasets.load(spec)
    except datasets.DataError as exc:
        p.error(f"{flag}: {exc}")


def run_compare(p, args) -> int:
    specs = [s.strip() for s in args.compare.split(",") if s.strip()]
    if len(specs) < 2:
        p.error(f"--compare needs at least two backends, got {args.compare!r}")
    for spec in specs:
        if parse_spec(spec)[0] not in BACKENDS:
            p.error(f"--compare: unknown backend {parse_spec(spec)[0]!r} in {spec!r}; choose from {', '.join(BACKENDS)}")
        try:
            resolve(*parse_spec(spec))
        except BackendError as exc:
            return _one_line_error(p, f"--compare {spec}: {exc}")
    if args.epochs is None:
        args.epochs = parity_mod.COMPARE_EPOCHS
    if args.dtype is None:
        args.dtype = parity_mod.COMPARE_DTYPE
    config = _config(args)
    dataset = _load_data(p, args.data, "--data")
    print(f"parity: {', '.join(specs)}; preset {config.preset}, {config.dtype}, {config.epochs} epoch(s), "
          f"{len(dataset.train) if config.train_count is None else min(config.train_count, len(dataset.train))} "
          f"training images ({dataset.source})", flush=True)
    progress = Progress(config.epochs, not args.quiet)
    report = parity_mod.compare(specs, config, dataset.train, rtol=args.rtol, atol=args.atol,
                                on_backend=lambda spec: print(f"  training on {spec} ...", flush=True),
                                progress=progress)
    print(parity_mod.format_report(report))
    write_json(os.path.join(args.out, "parity.json"), report)
    if args.plot:
        from .plots import plot_parity
        plot_parity(report, os.path.join(args.out, "parity.png"))
    print(f"wrote {os.path.join(args.out, 'parity.json')}")
    return EXIT_OK if report["result"] == "PASS" else EXIT_FAIL


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    keep_freed_memory()  # the next step reuses this step's memory (xpcnn.hostmem)
    if args.compare:
        return run_compare(p, args)

    backend_name = args.backend or ("cupy" if (args.device or "").startswith("cuda") else "numpy")
    try:
        backend = resolve(backend_name, args.device)
    except BackendError as exc:
        return _one_line_error(p, str(exc))
    base = None
    if args.resume:
        try:
            from .training import config_from_checkpoint
            base = config_from_checkpoint(args.resume)
        except CheckpointError as exc:
            p.error(f"--resume: {exc}")
    try:
        config = _config(args, base)
    except ValueError as exc:
        p.error(str(exc))
    dataset = _load_data(p, args.data, "--data")
    if len(dataset.train) == 0:
        p.error(f"--data: {dataset.source} has no training images (train-images-idx3-ubyte is missing)")
    evaluation = _load_data(p, args.eval_data, "--eval-data") if args.eval_data else None
    if evaluation is not None and evaluation.test is None:
        p.error(f"--eval-data: {args.eval_data} has no test split")

    trainer = Trainer(config, backend, threads=args.threads, chunk=args.chunk)
    if args.resume:
        try:
            trainer.resume(args.resume)
        except CheckpointError as exc:
            p.error(f"--resume: {exc}")
    checkpoint_path = os.path.join(args.out, "checkpoint.npz")
    used = min(config.train_count or len(dataset.train), len(dataset.train))
    print(f"xpcnn: preset {config.preset}, task {config.task}, {backend.label}, {config.dtype}; "
          f"{used} training / {len(dataset.validation) if dataset.validation else 0} validation images "
          f"({dataset.source}); {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} lr {config.lr}"
          + (f" (x{config.lr_decay:g} per epoch)" if config.lr_decay != 1 else "")
          + (f"; {args.threads} threads per batch" if args.threads != 1 else "")
          + (f"; pieces of at most {args.chunk} images" if args.chunk else "")
          + (f"; resuming at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}" if args.resume else ""),
          flush=True)
    caught = _install_signal_handlers(trainer)
    started = time.perf_counter()
    try:
        trainer.fit(dataset.train, dataset.validation, progress=Progress(config.epochs, not args.quiet),
                    on_epoch=lambda r: _print_epoch(r, config.epochs), checkpoint_path=checkpoint_path)
    except Diverged as exc:
        last = f"; the last good checkpoint is {checkpoint_path}" if os.path.exists(checkpoint_path) else ""
        print(f"error: {exc}{last}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as exc:
        name = signal.Signals(caught.get("signal", signal.SIGINT)).name
        print(f"\n{name}: {exc}; saved {checkpoint_path}; continue with: "
              f"python scripts/train.py --resume {checkpoint_path}", file=sys.stderr)
        return 128 + caught.get("signal", signal.SIGINT)
    except (OSError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IO
    seconds = time.perf_counter() - started

    metrics = {"config": dataclasses.asdict(config), "backend": backend.label, "data": dataset.source,
               "train_seconds": seconds, "history": trainer.state.history, "step_losses": trainer.state.step_losses}
    final = evaluation.test if evaluation is not None else dataset.validation
    if final is not None and len(final):
        label = f"test ({args.eval_data})" if evaluation is not None else "validation"
        loss, accuracy, predicted = trainer.evaluate(final, predictions=True)
        truth = datasets.task_targets(final.labels, config.task).reshape(len(final), -1)[:, 0].astype(np.int64)
        matrix = confusion_matrix(truth, predicted, 2 if config.task == "binary" else 10)
        print(f"final {label} accuracy {100 * accuracy:.2f}% (loss {loss:.4f}, {len(final)} images)")
        print(_format_confusion(matrix))
        metrics["final"] = {"split": label, "accuracy": accuracy, "loss": loss, "images": len(final),
                            "confusion_matrix": matrix.tolist()}
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    if args.plot:
        from .plots import plot_run
        digit = (final or dataset.train).images[0]
        for path in plot_run(trainer, metrics, digit, args.out):
            print(f"wrote {path}")
    print(f"wrote {os.path.join(args.out, 'metrics.json')} and {checkpoint_path} ({seconds:.1f}s training)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
