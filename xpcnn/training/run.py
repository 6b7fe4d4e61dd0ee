"""Run assembly: a training run made from its options and checked whole before the first step --
what ``xpcnn train`` does, as library functions (the command line only parses and reports)::

    from xpcnn.training.run import RunOptions, train

    outcome = train(RunOptions(data="embedded", settings={"epochs": 2, "lr": 0.1}, out="runs/py"))
    outcome.status  # "done", "diverged", "interrupted" or "failed"

:func:`train` is :func:`check_options`, :func:`prepare_run` (Config, backend, data, model,
extensions, and the step executor: plain, split, or compiled by the backend's compiler),
:func:`start_trainer` and :func:`train_run` (the fit; SIGINT or SIGTERM stop it cleanly).  A problem
found before training raises :class:`UsageError`, which names the option in the command line's words
(``--lr``, ``--data`` ...); a backend, device or compiler this machine lacks, its :class:`Unavailable`.

Data-parallel training runs :func:`train` on every MPI rank with the rank's
:class:`~xpcnn.distributed.Job` (``mpiexec -n 4 python my_script.py``)::

    from xpcnn.distributed import run_job

    run_job(lambda job: int(train(options, job=job).status != "done"))

with the same checks: the ranks gather their problems, and every rank raises the same UsageError
(naming the rank when only some have it), or :class:`~xpcnn.distributed.RankMismatch` when they
would not run the same training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from xpcnn import data as datasets
from xpcnn.backends import Backend, BackendError, default_backend_name, resolve, wants_gpu
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.io.files import check_writable_dir
from xpcnn.nn.sequential import Sequential
from xpcnn.training import executors
from xpcnn.training.builders import build_model
from xpcnn.training.config import (
    PRESETS,
    Config,
    ConfigError,
    ResumeMismatch,
    check_choice,
    check_integer,
    check_number,
    resume_config,
)
from xpcnn.training.executors import StepExecutor
from xpcnn.training.extensions import Diverged, Extension, standard_extensions
from xpcnn.training.schedules import describe_schedule
from xpcnn.training.snapshot import read as read_checkpoint
from xpcnn.training.trainer import Interrupted, Trainer, last_batch_problem, stop_on_signals

if TYPE_CHECKING:
    from xpcnn.distributed import DataParallelStep, Job

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


class UsageError(ValueError):
    """An option that cannot be used, found before training.  ``option`` names it (``"--lr"``;
    None when no single option is at fault); the message is the command line's one line."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(message)
        self.option = option


class Unavailable(UsageError):
    """A backend, device or compiler that this machine lacks: the options themselves are well formed."""


@dataclass
class RunOptions:
    """What a run is made from: the command line's flags under their names (``xpcnn train --help``
    says what each does), the Config fields among them in ``settings`` (``{"lr": 0.1}``; with
    ``resume`` only ``epochs`` may differ from the checkpoint's)."""

    settings: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    data: str = "embedded"
    eval_data: str | None = None
    layout: str = "auto"
    classes: int | None = None
    backend: str | None = None
    device: str | None = None
    out: str = os.path.join("runs", "latest")
    plot: bool = False
    resume: str | None = None
    threads: int = 1
    chunk: int | None = None
    compile: bool | None = None  # None: where the backend compiles by default (JAX)
    reduction: str | None = None  # data-parallel runs: gather (the default), allreduce or nccl
    quiet: bool = False  # no progress bar
    compare: str | None = None  # comma-separated backend specs (xpcnn.tools.parity.compare_run)
    rtol: float | None = None
    atol: float | None = None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@contextlib.contextmanager
def options_named() -> Iterator[None]:
    """Turns a :class:`ConfigError` into the UsageError naming its flag (``--lr must be ...``)."""
    try:
        yield
    except ConfigError as exc:
        raise UsageError(_flag(exc.field), f"{_flag(exc.field)} {exc.problem}") from None


def _refuse(condition: object, option: str, message: str) -> None:
    if condition:
        raise UsageError(option, message)


def check_options(options: RunOptions, job: Job | None = None) -> None:
    """The checks of the options that are not Config fields (those are the Config's).  On a
    data-parallel rank (``job``) the combinations that data parallelism excludes are refused, and
    only rank 0, the one that writes, checks ``out``."""
    _refuse(options.reduction and job is None, "--reduction", "--reduction goes with --distributed")
    with options_named():
        for name in ("rtol", "atol"):
            if getattr(options, name) is not None:
                check_number(name, getattr(options, name), "[0, inf)")
        check_integer("threads", options.threads, 1)
        if options.chunk is not None:
            check_integer("chunk", options.chunk, 1)
    split, compare = options.threads != 1 or options.chunk, options.compare
    _refuse(options.threads != 1 and wants_gpu(options.backend or default_backend_name(options.device), options.device),
            "--threads", "--threads splits each batch over CPU cores; drop it for a GPU")
    _refuse(compare and split, "--compare",
            "--compare runs each backend on whole batches, single-threaded; drop --threads/--chunk")
    _refuse(options.compile and split, "--compile",
            "--compile runs whole batches through the compiled step; drop --threads/--chunk")
    _refuse(compare and options.resume, "--compare", "--compare and --resume cannot be combined")
    _refuse(compare and options.settings.get("schedule") == "plateau", "--schedule",
            "--schedule plateau follows the validation loss, which --compare does not compute; choose another schedule")
    _refuse(compare and (options.backend or options.device), "--compare",
            "--compare names its own backends; drop --backend/--device")
    problem = check_writable_dir(options.out) if job is None or job.is_main else None
    _refuse(problem, "--out", f"--out: {problem}")
    if options.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot", "--plot needs matplotlib; install the 'plot' extra: "
                                       "pip install 'xpcnn[plot]'") from None
    if job is not None:
        _refuse(compare, "--compare", "--compare runs in one process; drop --distributed")
        _refuse(options.threads != 1, "--threads", "--threads with --distributed: ranks take the cores (one rank per "
                "core: mpiexec -n N); drop --threads (--chunk still cuts each rank's share, docs/distributed.md)")
        _refuse(options.compile, "--compile", "--compile with --distributed: the compiled step runs whole batches in "
                                              "one process; drop --compile")


def _model_setting(value: Any) -> Any:
    """``model``: a spec as given, or the contents of a JSON file (compact) as the Config stores it."""
    if not isinstance(value, str) or not value.endswith(".json"):
        return value
    try:
        with open(value, encoding="utf-8") as handle:
            return json.dumps(json.load(handle), separators=(",", ":"))
    except OSError as exc:
        raise UsageError("--model", f"--model: {value}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError("--model", f"--model: {value}: not valid JSON ({exc})") from None


def run_config(options: RunOptions) -> Config:
    """The run's Config: the preset with ``settings``, or (``resume``) the checkpoint's with only
    ``epochs`` changed (the library's resume policy)."""
    unknown = [name for name in options.settings if name not in CONFIG_FIELDS]
    _refuse(unknown, "settings", f"settings: {', '.join(map(repr, unknown))} not configuration field(s)")
    settings = {name: _model_setting(value) if name == "model" else value for name, value in options.settings.items()}
    with options_named():
        check_choice("preset", options.preset, tuple(PRESETS))
        try:
            if options.resume:
                config = resume_config(read_checkpoint(options.resume).config, **settings)
            else:
                config = dataclasses.replace(PRESETS[options.preset], **settings)
        except ResumeMismatch as exc:
            raise UsageError("--resume", "--resume continues the checkpoint's run; only --epochs may change, not "
                             + ", ".join(f"{_flag(k)} ({old} in the checkpoint)"
                                         for k, (old, _) in exc.changed.items())) from None
        except CheckpointError as exc:
            raise UsageError("--resume", f"--resume: {exc}") from None
    _refuse(settings.get("momentum") is not None and config.optimizer != "momentum", "--momentum",  # else ignored
            f"--momentum is for --optimizer momentum; this run's optimizer is {config.optimizer}")
    for name, schedules, which in SCHEDULE_FLAGS:  # each flag of a schedule, given to another one: else ignored
        _refuse(settings.get(name) is not None and config.schedule not in schedules, _flag(name),
                f"{_flag(name)} is for --schedule {which}; this run's schedule is {config.schedule}")
    return config


# The flags that only some schedules read: (setting, those schedules, them in words).
SCHEDULE_FLAGS = (("lr_decay", ("exp", "step", "plateau"), "exp, step or plateau"),
                  ("step_size", ("step",), "step"), ("patience", ("plateau",), "plateau"),
                  ("lr_min", ("cosine", "plateau"), "cosine or plateau"))


def run_backend(options: RunOptions, job: Job | None = None) -> Backend:
    """The backend the options name (a data-parallel rank: on its rank's GPU, :func:`rank_device`)."""
    name = options.backend or default_backend_name(options.device)
    device = options.device
    if job is not None:
        from xpcnn.distributed import rank_device

        device = rank_device(name, device, job.local_rank)
    try:
        return resolve(name, device)
    except BackendError as exc:
        raise Unavailable("--backend", str(exc)) from None


def load_data(spec: str, option: str, layout: str, classes: int | None) -> datasets.Dataset:
    """:func:`xpcnn.data.load`, its DataError a UsageError naming ``option`` (``--data``, ``--eval-data``)."""
    try:
        return datasets.load(spec, layout=layout, classes=classes)
    except datasets.DataError as exc:
        raise UsageError(option, f"{option}: {exc}") from None


def training_count(config: Config, dataset: datasets.Dataset) -> int:
    """How many training images a run uses (``train_count`` of them, at most all)."""
    return min(config.train_count or len(dataset.train), len(dataset.train))


def fit_to_data(options: RunOptions, config: Config, dataset: datasets.Dataset) -> tuple[Config, Sequential]:
    """The Config with the data's image shape and classes (a resumed run must have the same ones)
    and its network, checked against the images by shape inference and against the batches
    (BatchNorm1D needs two images in the last batch of an epoch too)."""
    if options.resume:
        _refuse((config.image_shape, config.classes) != (dataset.image_shape, dataset.classes), "--data",
                f"--data: the checkpoint's run trained on {datasets.shape_text(config.image_shape)} images of "
                f"{config.classes} classes; this data has {datasets.shape_text(dataset.image_shape)} images of "
                f"{dataset.classes}")
    else:
        with options_named():
            config = dataclasses.replace(config, image_shape=dataset.image_shape, classes=dataset.classes)
    try:
        model = build_model(config)
    except ValueError as exc:  # SpecError: a spec or preset that does not fit the images
        raise UsageError("--model" if config.model else "--preset",
                         f"--model: {exc}" if config.model else f"--preset {config.preset}: {exc}") from None
    problem = last_batch_problem(model, training_count(config, dataset), config.batch_size)
    _refuse(problem, "--batch-size", f"--batch-size: {problem}")
    return config, model


def choose_executor(options: RunOptions, backend: Backend, compare: bool = False) -> StepExecutor:
    """The step executor the options ask for: compiled (``compile``, or by default where
    :func:`compiles_by_default`), split into shares (``threads``/``chunk``), or the plain step.
    Comparing backends, ``compile`` compiles the backends that can and runs the others eagerly."""
    if options.compile or (options.compile is None and executors.compiles_by_default(backend)):
        if executors.has_compiled_executor(backend) or not (compare or options.compile is None):
            try:
                return executors.compiled_executor(backend)
            except BackendError as exc:
                raise Unavailable("--compile", str(exc)) from None
    return executors.make_executor(options.threads, options.chunk)


@dataclass
class Run:
    """A run checked and assembled by :func:`prepare_run`, ready for :func:`start_trainer`."""

    options: RunOptions
    config: Config
    backend: Backend
    dataset: datasets.Dataset
    model: Sequential
    extensions: list[Extension]
    executor: StepExecutor


def prepare_run(options: RunOptions, job: Job | None = None) -> Run:
    """Everything a run needs, checked before any training (see :func:`check_options` for the
    other options): on a data-parallel rank (``job``) the executor is a
    :class:`~xpcnn.distributed.DataParallelStep`, which runs eagerly."""
    config = run_config(options)
    backend = run_backend(options, job)
    # A resumed run keeps its classes (only --epochs may change); the test data takes the training's.
    classes = options.classes if options.classes is not None or not options.resume else config.classes
    dataset = load_data(options.data, "--data", options.layout, classes)
    _refuse(len(dataset.train) == 0, "--data", f"--data: {dataset.source} has no training images")
    evaluation = None
    if options.eval_data:
        evaluation = load_data(options.eval_data, "--eval-data", options.layout, dataset.classes)
        _refuse(evaluation.test is None, "--eval-data", f"--eval-data: {options.eval_data} has no test split")
        _refuse(evaluation.image_shape != dataset.image_shape, "--eval-data",
                f"--eval-data: its images are {datasets.shape_text(evaluation.image_shape)}, the training images "
                f"{datasets.shape_text(dataset.image_shape)}")
    config, model = fit_to_data(options, config, dataset)
    _refuse(config.schedule == "plateau" and not (dataset.validation is not None and len(dataset.validation)),
            "--schedule", f"--schedule plateau follows the validation loss, and {dataset.source} has no validation "
                          f"images")
    final = evaluation.test if evaluation is not None else dataset.validation
    extensions = standard_extensions(
        out=options.out, test=final, source=dataset.source,
        test_label=f"test ({options.eval_data})" if evaluation is not None else "validation", verbose=True,
        progress=not options.quiet, plot_image=(final or dataset.train).images[0] if options.plot else None)
    if job is None:
        executor = choose_executor(options, backend)
    else:
        from xpcnn.distributed import DataParallelStep

        executor = DataParallelStep(job.comm, options.reduction or "gather", options.chunk)
    return Run(options, config, backend, dataset, model, extensions, executor)


def start_trainer(run: Run) -> Trainer:
    """The run's Trainer, resumed from ``options.resume`` when given; close it (``with``)."""
    try:
        trainer = Trainer(run.config, run.backend, run.model, executor=run.executor, extensions=run.extensions)
    except ValueError as exc:  # an executor that cannot run this model (SplitStep and BatchNorm)
        raise UsageError(None, str(exc)) from None
    trainer.class_names = list(run.dataset.class_names) if run.dataset.class_names else None  # (a resume keeps its own)
    if run.options.resume:
        try:
            trainer.resume(run.options.resume)
        except CheckpointError as exc:
            trainer.close()
            raise UsageError("--resume", f"--resume: {exc}") from None
    return trainer


@dataclass
class Outcome:
    """How a run ended: ``status`` "done", "diverged", "interrupted" (by ``signal``, with a
    resumable checkpoint) or "failed" (a checkpoint or data file failed mid-run); ``error`` the line
    this process reports (data-parallel ranks: rank 0 says what they share, each rank its own I/O
    failure); ``results`` the trainer's (``train_seconds``, ``final``)."""

    status: str
    error: str | None = None
    signal: int = 0
    results: dict = field(default_factory=dict)


def header(run: Run, trainer: Trainer) -> str:
    """The line a run starts with: preset, task, backend, data, schedule, executor, resume point."""
    config, executor, dataset = trainer.config, trainer.executor.describe(), run.dataset
    return (f"xpcnn: preset {config.preset}, task {config.task}, {trainer.backend.label}, {config.dtype}; "
            f"{training_count(config, dataset)} training / {len(dataset.validation) if dataset.validation else 0} "
            f"validation images ({dataset.source}); {config.epochs} epochs, batch {config.batch_size}, "
            f"{'nesterov ' if config.nesterov else ''}{config.optimizer} lr {config.lr}"
            + (f" ({schedule})" if (schedule := describe_schedule(config)) else "")
            + (f"; {executor}" if executor else "")
            + (f"; resuming at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}"
               if run.options.resume else ""))


def train_run(run: Run, trainer: Trainer) -> Outcome:
    """Fit ``trainer`` on the run's data (printing the header first, on the main process), a
    signal stopping it after a step (:func:`stop_on_signals`)."""
    checkpoint = os.path.join(run.options.out, "checkpoint.npz")
    main = trainer.is_main  # data-parallel ranks: only the main one prints
    if main:
        print(header(run, trainer), flush=True)
    with stop_on_signals(trainer) as caught:
        try:
            trainer.fit(run.dataset.train, run.dataset.validation)
        except Diverged as exc:
            last = f"; the last good checkpoint is {checkpoint}" if os.path.exists(checkpoint) else ""
            return Outcome("diverged", f"error: {exc}{last}" if main else None)
        except Interrupted as exc:
            # Data-parallel ranks agreed on the signal (one rank may have got it alone).
            signum = getattr(trainer.executor, "agreed_signal", 0) or caught.get("signal", signal.SIGINT)
            return Outcome("interrupted", f"\n{signal.Signals(signum).name}: {exc}; saved {checkpoint}; continue with: "
                                          f"python scripts/train.py --resume {checkpoint}" if main else None, signum)
        except (OSError, CheckpointError) as exc:
            return Outcome("failed", f"error: {exc}")
    trainer.executor.barrier()  # data-parallel ranks: the main one has written its files
    if main:
        print(f"wrote {os.path.join(run.options.out, 'metrics.json')} and {checkpoint} "
              f"({trainer.results['train_seconds']:.1f}s training)")
    return Outcome("done", results=trainer.results)


def train(options: RunOptions, job: Job | None = None) -> Outcome:
    """Check, assemble and train the run of ``options`` in this process or, with ``job``, as this
    rank's part of a data-parallel run (module doc).  Raises UsageError before any training."""
    if job is None:
        check_options(options)
        run = prepare_run(options)
        trainer = start_trainer(run)
    else:
        run, trainer = _prepare_on_ranks(options, job)
    with trainer:
        return train_run(run, trainer)


def _prepare_on_ranks(options: RunOptions, job: Job) -> tuple[Run, Trainer]:
    """:func:`prepare_run` and :func:`start_trainer` on every rank: rank 0 reads a resumed
    checkpoint for all (no shared filesystem needed); the ranks gather their problems and each raises
    the same UsageError (naming the rank when only some have it); then they check that they run the
    same configuration from the same parameters (RankMismatch)."""
    shared = job.share_file(options.resume) if options.resume else None
    trainer, error = None, None
    try:
        _refuse(options.resume and shared is None, "--resume", "--resume: rank 0 could not read the checkpoint")
        options = dataclasses.replace(options, resume=shared)
        check_options(options, job)
        run = prepare_run(dataclasses.replace(options, compile=False), job)  # (JAX compiles by default)
        trainer = start_trainer(run)
    except (ValueError, OSError) as exc:  # UsageErrors; e.g. reduction 'nccl' on a CPU backend
        error = exc
    failures = job.gather_failures(None if error is None else str(error))
    if failures:
        if trainer is not None:
            trainer.close()
        rank, message = failures[0]
        if len({message for _, message in failures}) == 1 and len(failures) == job.size:  # every rank alike
            raise UsageError(getattr(error, "option", None), message)
        raise UsageError(None, f"rank {rank}: {message}")
    assert trainer is not None  # (no rank failed)
    try:
        cast("DataParallelStep", trainer.executor).check_same_run(trainer)
    except BaseException:
        trainer.close()
        raise
    return run, trainer
