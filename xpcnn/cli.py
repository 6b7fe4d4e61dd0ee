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
import tempfile

from xpcnn import data as datasets
from xpcnn.tools import parity as parity_mod
from xpcnn.backends import BACKENDS, BackendError, DTYPES, default_backend_name, parse_spec, resolve
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.io.files import check_writable_dir, write_json
from xpcnn.nn.presets import SPEC_HELP
from xpcnn.training import (PRESETS, ConfigError, Diverged, Interrupted, ProgressBar, ResumeMismatch, Trainer,
                       build_model, make_executor, resume_config, standard_extensions)
from xpcnn.training.executors.compiled import compiled_executor, compiles_by_default, has_compiled_executor
from xpcnn.training.hostmem import keep_freed_memory
from xpcnn.training.snapshot import read as read_checkpoint
from xpcnn.training.trainer import last_batch_problem

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DIVERGED, EXIT_IO = 0, 1, 2, 3, 4


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train xpcnn's CNN on MNIST on any array backend, or compare backends for parity.",
        epilog="examples:\n"
               "  python scripts/train.py                                   # embedded MNIST, NumPy, CPU\n"
               "  python scripts/train.py --eval-data ../shared/data/mnist  # + real MNIST test accuracy\n"
               "  python scripts/train.py --device cuda                     # CuPy on the GPU\n"
               "  python scripts/train.py --preset article                  # the article's network\n"
               "  python scripts/train.py --compare numpy,torch --dtype float64\n"
               "  python scripts/train.py --resume runs/latest/checkpoint.npz --epochs 20\n"
               "  python scripts/train.py --preset lenet5 --eval-data ../shared/data/mnist\n"
               "  python scripts/train.py --data cifar10 --preset vgg\n"
               "  python scripts/train.py --data my_rgb.npz --model conv32k3p1-relu-maxpool2-flatten-dense128-relu-dense\n\n"
               + SPEC_HELP + "\n\n" + __doc__.split("\n\n", 1)[0])
    p.add_argument("--backend", choices=BACKENDS, help="array library (default numpy; cupy when --device cuda)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or an array_api_strict device (device1, device2)")
    p.add_argument("--data", default="embedded",
                   help="'embedded' (5,000 digits in the package), an IDX folder, a mnist.npz, or 'download'")
    p.add_argument("--eval-data", help="IDX folder or .npz whose test split gives the final test accuracy")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto",
                   help="how 4-D image arrays are laid out: channels first (N, C, H, W) or last (N, H, W, C, as "
                        "Keras stores colour images); auto: channels last when the last axis is 1, 3 or 4 and "
                        "axis 1 is not")
    p.add_argument("--classes", type=int, metavar="K", help="the number of classes (default: the largest label + 1)")
    p.add_argument("--model", metavar="SPEC|FILE.json",
                   help="the network: a spec such as conv32k3p1-relu-maxpool2-flatten-dense128-relu-dense "
                        "(syntax below) or a JSON file of layer records (as checkpoints store them); default: "
                        "the preset's network")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="network and hyper-parameters: 'default' conv 5x5x16-ReLU-maxpool-dense (MNIST); 'article' the "
                        "article's network (MNIST); 'lenet5' LeNet-5 adapted to the input size; 'vgg' a small "
                        "VGG for 3x32x32 colour images (batch norm, dropout)")
    p.add_argument("--task", choices=datasets.TASKS, help="binary (digit > 4, the article's) or multiclass")
    p.add_argument("--epochs", type=int, help="passes over the training data (preset default; compare mode: 1)")
    p.add_argument("--batch-size", type=int, help="images per gradient step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-decay", type=float,
                   help="multiply the learning rate by this each epoch (default preset 0.8, article 1.0)")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam", "adamw"),
                   help="sgd (the article's rule), momentum, adam, adamw (decoupled weight decay)")
    p.add_argument("--shift", type=int, metavar="PIXELS",
                   help="augmentation: shift each training image by up to this many pixels (default 2; article 0)")
    p.add_argument("--weight-decay", type=float, help="weight decay on every parameter (L2; decoupled for adamw)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each channel by the training split's mean and std (stored in checkpoints; "
                        "default: the preset's, on for vgg)")
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
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run each training step compiled by the backend's own compiler: jax.jit on JAX, one CUDA "
                        "graph per step on torch:cuda (the same step; docs/performance.md).  Default: on for JAX, "
                        "off elsewhere; --no-compile runs JAX eagerly.  With --compare: compile the backends that can")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n N python scripts/train.py --distributed ... "
                        "(each rank computes one share of every batch; bitwise the --threads N run; needs "
                        "xpcnn[mpi], docs/distributed.md)")
    p.add_argument("--reduction", choices=("gather", "allreduce", "nccl"),
                   help="with --distributed: how gradients are summed: gather (default; in rank order, bitwise "
                        "the --threads N run), allreduce (repeatable, not bitwise-equal), nccl (GPU ranks, "
                        "gradients stay on the GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    return p


CONFIG_FLAGS = ("task", "epochs", "batch_size", "lr", "lr_decay", "optimizer", "momentum", "seed", "init", "dtype",
                "weight_decay", "normalize", "model", "shift")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Checks of flags that are not configuration values (those are the Config's to check)."""
    for name in ("rtol", "atol"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            p.error(f"--{name} must be a non-negative number, got {value}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.chunk is not None and args.chunk < 1:
        p.error(f"--chunk must be >= 1, got {args.chunk}")
    if args.threads != 1 and (default_backend_name(args.device) == "cupy" or args.backend == "cupy"):
        p.error("--threads splits each batch over CPU cores; drop it for a GPU")
    if args.compare and (args.threads != 1 or args.chunk):
        p.error("--compare runs each backend on whole batches, single-threaded; drop --threads/--chunk")
    if args.compile and (args.threads != 1 or args.chunk):
        p.error("--compile runs whole batches through the compiled step; drop --threads/--chunk")
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


def _model_flag(p: argparse.ArgumentParser, value: str | None) -> str | None:
    """--model: a spec as given, or the contents of a JSON file (compact) as the Config stores it."""
    if value is None or not value.endswith(".json"):
        return value
    try:
        with open(value, encoding="utf-8") as handle:
            return json.dumps(json.load(handle), separators=(",", ":"))
    except OSError as exc:
        p.error(f"--model: {value}: cannot read: {exc.strerror}")
    except ValueError as exc:
        p.error(f"--model: {value}: not valid JSON ({exc})")


def _config(p: argparse.ArgumentParser, args):
    """The run's Config: the preset with the flags given, or (``--resume``) the checkpoint's with
    only ``--epochs`` changed (the library's resume policy)."""
    args.model = _model_flag(p, args.model)
    overrides = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    try:
        if args.resume:
            config = resume_config(read_checkpoint(args.resume).config, **overrides)
        else:
            config = dataclasses.replace(PRESETS[args.preset], **overrides)
        if args.momentum is not None and config.optimizer != "momentum":  # it would be silently ignored
            p.error(f"--momentum is for --optimizer momentum; this run's optimizer is {config.optimizer}")
        return config
    except ConfigError as exc:
        p.error(f"{_flag(exc.field)} {exc.problem}")
    except ResumeMismatch as exc:
        p.error("--resume continues the checkpoint's run; only --epochs may change, not "
                + ", ".join(f"{_flag(k)} ({old} in the checkpoint)" for k, (old, _) in exc.changed.items()))
    except CheckpointError as exc:
        p.error(f"--resume: {exc}")


def _install_signal_handlers(trainer: Trainer) -> dict:
    caught = {}

    def handler(signum, frame):
        caught["signal"] = signum
        if hasattr(trainer.executor, "signal"):  # data-parallel: the ranks agree on which signal
            trainer.executor.signal = signum
        trainer.stop_requested = True
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
    return caught


def _one_line_error(p: argparse.ArgumentParser, message: str) -> int:
    """A missing backend or GPU: one line (no usage block, the flags were fine), status 2."""
    if getattr(p, "collective", False):  # --distributed: the ranks report their problems together
        raise _SetupFailed(message)
    print(f"{p.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _load_data(p, spec: str, flag: str, layout: str, classes: int | None):
    try:
        return datasets.load(spec, layout=layout, classes=classes)
    except datasets.DataError as exc:
        p.error(f"{flag}: {exc}")


def _setup(p: argparse.ArgumentParser, args, resolve_backend):
    """What a training run needs, checked before any training: the Config fitted to the data (image
    shape, classes), the backend, the data, the model, and the extensions.  Every problem is a usage
    error naming the flag."""
    config = _config(p, args)
    try:
        backend = resolve_backend(args.backend or default_backend_name(args.device), args.device)
    except BackendError as exc:
        raise _BackendProblem(str(exc)) from None
    # A resumed run keeps its classes (only --epochs may change); the test data takes the training's.
    classes = args.classes if args.classes is not None or not args.resume else config.classes
    dataset = _load_data(p, args.data, "--data", args.layout, classes)
    if len(dataset.train) == 0:
        p.error(f"--data: {dataset.source} has no training images")
    evaluation = _load_data(p, args.eval_data, "--eval-data", args.layout, dataset.classes) if args.eval_data else None
    if evaluation is not None and evaluation.test is None:
        p.error(f"--eval-data: {args.eval_data} has no test split")
    if evaluation is not None and evaluation.image_shape != dataset.image_shape:
        p.error(f"--eval-data: its images are {datasets.shape_text(evaluation.image_shape)}, "
                f"the training images {datasets.shape_text(dataset.image_shape)}")
    config, model = _fit_to_data(p, args, config, dataset)
    final = evaluation.test if evaluation is not None else dataset.validation
    extensions = standard_extensions(
        out=args.out, test=final, test_label=f"test ({args.eval_data})" if evaluation is not None else "validation",
        source=dataset.source, verbose=True, progress=not args.quiet,
        plot_image=(final or dataset.train).images[0] if args.plot else None)
    return config, backend, dataset, model, extensions


def _training_count(config, dataset) -> int:
    """How many training images a run uses (``train_count`` of them, at most all)."""
    return min(config.train_count or len(dataset.train), len(dataset.train))


def _fit_to_data(p: argparse.ArgumentParser, args, config, dataset):
    """The Config with the data's image shape and classes (a resumed run must have the same ones)
    and its network, checked against the images by shape inference and against the batches
    (BatchNorm1D needs two images in the last batch of an epoch too)."""
    if args.resume:
        if (config.image_shape, config.classes) != (dataset.image_shape, dataset.classes):
            p.error(f"--data: the checkpoint's run trained on {datasets.shape_text(config.image_shape)} images of {config.classes} "
                    f"classes; this data has {datasets.shape_text(dataset.image_shape)} images of {dataset.classes}")
    else:
        try:
            config = dataclasses.replace(config, image_shape=dataset.image_shape, classes=dataset.classes)
        except ConfigError as exc:
            p.error(f"{_flag(exc.field)} {exc.problem}")
    try:
        model = build_model(config)
    except ValueError as exc:  # SpecError: a spec or preset that does not fit the images
        p.error(f"--model: {exc}" if config.model else f"--preset {config.preset}: {exc}")
    problem = last_batch_problem(model, _training_count(config, dataset), config.batch_size)
    if problem:
        p.error(f"--batch-size: {problem}")
    return config, model


class _BackendProblem(Exception):
    """A backend or device that cannot be used: one line, exit 2."""


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
    config = _config(p, args)
    dataset = _load_data(p, args.data, "--data", args.layout, args.classes)
    config, _ = _fit_to_data(p, args, config, dataset)
    print(f"parity: {', '.join(specs)}; preset {config.preset}, {config.dtype}, {config.epochs} epoch(s), "
          f"{_training_count(config, dataset)} "
          f"training images ({dataset.source})", flush=True)
    report = parity_mod.compare(specs, config, dataset.train, rtol=args.rtol, atol=args.atol,
                                on_backend=lambda spec: print(f"  training on {spec} ...", flush=True),
                                extensions=[] if args.quiet else [ProgressBar()],
                                executor=lambda backend: _executor(args, backend, compare=True))
    print(parity_mod.format_report(report))
    write_json(os.path.join(args.out, "parity.json"), report)
    if args.plot:
        from xpcnn.tools.plots import plot_parity
        plot_parity(report, os.path.join(args.out, "parity.png"))
    print(f"wrote {os.path.join(args.out, 'parity.json')}")
    return EXIT_OK if report["result"] == "PASS" else EXIT_FAIL


def _header(trainer: Trainer, dataset, resumed: bool) -> str:
    config, executor = trainer.config, trainer.executor.describe()
    used = _training_count(config, dataset)
    return (f"xpcnn: preset {config.preset}, task {config.task}, {trainer.backend.label}, {config.dtype}; "
            f"{used} training / {len(dataset.validation) if dataset.validation else 0} validation images "
            f"({dataset.source}); {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} lr {config.lr}"
            + (f" (x{config.lr_decay:g} per epoch)" if config.lr_decay != 1 else "")
            + (f"; {executor}" if executor else "")
            + (f"; resuming at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}" if resumed else ""))


def _executor(args, backend, compare: bool = False):
    """The step executor the flags ask for: compiled (--compile, or by default where
    :func:`compiles_by_default`), split into shares (--threads/--chunk), or the plain step.  In
    compare mode --compile compiles the backends that can and runs the others eagerly."""
    if args.compile or (args.compile is None and compiles_by_default(backend)):
        if has_compiled_executor(backend) or not (compare or args.compile is None):
            return compiled_executor(backend)  # raises, naming the backend, where there is none
    return make_executor(args.threads, args.chunk)


def train_main(argv=None, prog: str = "train.py") -> int:
    """``train.py`` / ``xpcnn train``: parse -> Config -> Trainer + extensions -> exit status.
    With ``--distributed`` every MPI rank runs this (:func:`_train_distributed`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if _asks_for_distributed(argv):
        from xpcnn.distributed import run_job

        return run_job(lambda job: _train_distributed(argv, prog, job), prog)
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.reduction:
        p.error("--reduction goes with --distributed")
    _check_args(p, args)
    keep_freed_memory()  # the next step reuses this step's memory (xpcnn.training.hostmem)
    if args.compare:
        return run_compare(p, args)
    try:
        config, backend, dataset, model, extensions = _setup(p, args, resolve)
    except _BackendProblem as exc:
        return _one_line_error(p, str(exc))
    try:
        executor = _executor(args, backend)
    except BackendError as exc:
        return _one_line_error(p, str(exc))
    try:
        trainer = Trainer(config, backend, model, executor=executor, extensions=extensions)
    except ValueError as exc:  # an executor that cannot run this model (SplitStep and BatchNorm)
        p.error(str(exc))
    with trainer:
        trainer.class_names = list(dataset.class_names) if dataset.class_names else None  # (a resume keeps its own)
        if args.resume:
            try:
                trainer.resume(args.resume)
            except CheckpointError as exc:
                p.error(f"--resume: {exc}")
        return _train(trainer, dataset, args)


def _train(trainer: Trainer, dataset, args) -> int:
    checkpoint_path = os.path.join(args.out, "checkpoint.npz")
    main = trainer.is_main  # data-parallel ranks: only the main one prints
    if main:
        print(_header(trainer, dataset, bool(args.resume)), flush=True)
    caught = _install_signal_handlers(trainer)
    try:
        trainer.fit(dataset.train, dataset.validation)
    except Diverged as exc:
        last = f"; the last good checkpoint is {checkpoint_path}" if os.path.exists(checkpoint_path) else ""
        if main:
            print(f"error: {exc}{last}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as exc:
        # Data-parallel ranks agreed on the signal (one rank may have got it alone).
        signum = getattr(trainer.executor, "agreed_signal", 0) or caught.get("signal", signal.SIGINT)
        if main:
            print(f"\n{signal.Signals(signum).name}: {exc}; saved {checkpoint_path}; continue with: "
                  f"python scripts/train.py --resume {checkpoint_path}", file=sys.stderr)
        return 128 + signum
    except (OSError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IO
    trainer.executor.barrier()  # data-parallel ranks: the main one has written its files
    if main:
        print(f"wrote {os.path.join(args.out, 'metrics.json')} and {checkpoint_path} "
              f"({trainer.results['train_seconds']:.1f}s training)")
    return EXIT_OK


# -- --distributed: every MPI rank runs train_main ------------------------------------------------

class _SetupFailed(Exception):
    """A rank's usage error while the ranks set up (they report together, then all exit 2)."""


def _asks_for_distributed(argv) -> bool:
    """Whether the command line has --distributed (read before the real parse, which then runs
    with MPI up, so that only rank 0 prints a usage error)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--distributed", action="store_true")
    try:
        return pre.parse_known_args(argv)[0].distributed
    except SystemExit:
        return False


def _train_distributed(argv, prog: str, job) -> int:
    """``train_main`` on one MPI rank (``job``: :class:`xpcnn.distributed.Job`).  Rank 0
    alone prints; a usage error on any rank while the ranks set up is reported once (naming the
    rank when only some ranks have it) and every rank exits 2; then the ranks check that they run
    the same configuration from the same parameters (exit 2 otherwise) and train."""
    from xpcnn.distributed import DataParallelStep, RankMismatch, rank_device

    p = build_parser(prog)
    if not job.is_main:  # argparse's messages (usage errors, --help) from rank 0 only
        p._print_message = lambda message, file=None: None
    args = p.parse_args(argv)  # the same argv everywhere: every rank fails alike, or none
    shared = job.share_file(args.resume) if args.resume else None  # rank 0 reads, every rank gets it
    p.collective = True  # from here p.error raises _SetupFailed
    p.error = lambda message: (_ for _ in ()).throw(_SetupFailed(message))
    trainer, problem = None, None
    try:
        if args.resume and shared is None:
            raise _SetupFailed("--resume: rank 0 could not read the checkpoint")  # rank 0 says why
        args.resume = shared
        if job.is_main:
            _check_args(p, args)
        else:
            _check_args_but_out(p, args)
        _check_distributed_args(p, args)
        keep_freed_memory()
        try:
            config, backend, dataset, model, extensions = _setup(
                p, args, lambda name, device: resolve(name, rank_device(name, device, job.local_rank)))
        except _BackendProblem as exc:
            raise _SetupFailed(str(exc)) from None
        executor = DataParallelStep(job.comm, args.reduction or "gather", args.chunk)
        trainer = Trainer(config, backend, model, executor=executor, extensions=extensions)
        trainer.class_names = list(dataset.class_names) if dataset.class_names else None
        if args.resume:
            try:
                trainer.resume(args.resume)
            except CheckpointError as exc:
                p.error(f"--resume: {exc}")
    except _SetupFailed as exc:
        problem = str(exc)
    except (ValueError, OSError) as exc:  # e.g. reduction 'nccl' on a CPU backend
        problem = str(exc)
    try:
        failures = job.gather_failures(problem)
        if failures:
            if job.is_main:
                messages = {message for _, message in failures}
                rank, message = failures[0]
                where = "" if len(messages) == 1 and len(failures) == job.size else f"rank {rank}: "
                print(f"{prog}: error: {where}{message}", file=sys.stderr)
            return EXIT_USAGE
        try:
            trainer.executor.check_same_run(trainer)
        except RankMismatch as exc:
            if job.is_main:
                print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.resume and not job.is_main:
            args.resume = "rank 0's checkpoint"  # (only rank 0 prints the header)
        return _train(trainer, dataset, args)
    finally:
        if trainer is not None:
            trainer.close()


def _check_args_but_out(p, args) -> None:
    """_check_args on ranks other than 0, which write nothing: --out need not exist on their machine."""
    out, args.out = args.out, tempfile.gettempdir()
    try:
        _check_args(p, args)
    finally:
        args.out = out


def _check_distributed_args(p, args) -> None:
    if args.compare:
        p.error("--compare runs in one process; drop --distributed")
    if args.threads != 1:
        p.error("--threads with --distributed: ranks take the cores (one rank per core: mpiexec -n N); drop --threads "
                "(--chunk still cuts each rank's share, docs/distributed.md)")
    if args.compile:
        p.error("--compile with --distributed: the compiled step runs whole batches in one process; drop --compile")
    args.compile = False  # (JAX compiles by default; the data-parallel step runs eagerly)


def predict_main(argv=None, prog: str = "predict.py") -> int:
    """``xpcnn predict`` / ``scripts/predict.py``: classify image or array files with a trained
    checkpoint.  Exit status 0 when every input was classified, 1 when some could not be (each has
    its line), 2 on a usage error (bad checkpoint, backend or flags)."""
    from xpcnn.inference import Predictor, format_prediction

    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify images with a network trained by xpcnn (any backend; the same preprocessing "
                    "as in training: pixels scaled to [0, 1], the run's normalisation, no resizing).",
        epilog="examples:\n"
               "  python scripts/predict.py runs/latest/checkpoint.npz digit.png other.jpg\n"
               "  python scripts/predict.py runs/latest/checkpoint.npz digits.npy --json --backend torch")
    p.add_argument("checkpoint", help="a checkpoint.npz written by training")
    p.add_argument("inputs", nargs="+", help="image files (PNG, JPEG, BMP: needs xpcnn[image]) or arrays (.npy, "
                                             ".npz with 'images' or 'x_test'), shaped like the training images")
    p.add_argument("--backend", choices=BACKENDS, help="array library (default numpy; cupy when --device cuda)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or an array_api_strict device")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto", help="layout of 4-D array files")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout instead of lines")
    args = p.parse_args(argv)
    try:
        backend = resolve(args.backend or default_backend_name(args.device), args.device)
    except BackendError as exc:
        return _one_line_error(p, str(exc))
    try:
        predictor = Predictor(args.checkpoint, backend)
    except CheckpointError as exc:
        p.error(f"checkpoint: {exc}")
    predictions = predictor.classify(args.inputs, args.layout)
    if args.json:
        print(json.dumps([pr.as_dict() for pr in predictions], indent=2))
    else:
        for prediction in predictions:
            print(format_prediction(prediction), file=sys.stderr if prediction.error else sys.stdout)
    return EXIT_FAIL if any(pr.error for pr in predictions) else EXIT_OK


COMMANDS = {"train": train_main, "predict": predict_main}


def main(argv=None) -> int:
    """The ``xpcnn`` console command: ``xpcnn train ...`` (``xpcnn train --help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: xpcnn {{{','.join(COMMANDS)}}} ...\n\n  train    train a network, compare backends, resume "
              "(xpcnn train --help)\n  predict  classify images with a trained checkpoint (xpcnn predict --help)", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"xpcnn: error: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK if argv else EXIT_USAGE
    return COMMANDS[argv[0]](argv[1:], prog=f"xpcnn {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
