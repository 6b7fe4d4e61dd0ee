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
import filecmp
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from xpcnn import data as datasets
from xpcnn.backends import Backend, BackendError, adapter_for, default_backend_name, resolve, wants_gpu
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.io.files import check_writable_dir
from xpcnn.nn.activations import Sigmoid
from xpcnn.nn.dense import Dense
from xpcnn.nn.sequential import Sequential
from xpcnn.nn.spec import SpecError, activation_values, read_model_file
from xpcnn.nn.validate import available_memory, bytes_text
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
    default_recipe,
    resume_config,
)
from xpcnn.training.executors import StepExecutor
from xpcnn.training.extensions import Diverged, Extension, standard_extensions
from xpcnn.training.schedules import describe_schedule
from xpcnn.training.snapshot import compact_architecture
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
    preset: str | None = None  # None: "default", or with a ``model`` setting the recipe of one's own network
    data: str = ""  # "": the data a resumed run trained on, else "embedded"
    eval_data: str | None = None
    layout: str = "auto"
    classes: int | None = None
    backend: str | None = None
    device: str | None = None
    out: str = ""  # "": a fresh folder runs/<date>-<time>-<preset> (resume: the checkpoint's folder)
    plot: bool = False
    resume: str | None = None
    init_from: str | None = None  # fine-tuning: a new run starting from this checkpoint's weights
    threads: int | None = None  # None: every usable core (CPU backends; executors.default_executor)
    chunk: int | None = None  # None: executors.DEFAULT_CHUNK images per piece on a CPU
    compile: bool | None = None  # None: where the backend compiles by default (JAX)
    reduction: str | None = None  # data-parallel runs: gather (the default), allreduce or nccl
    quiet: bool = False  # no progress bar
    compare: str | None = None  # comma-separated backend specs (xpcnn.tools.parity.compare_run)
    rtol: float | None = None
    atol: float | None = None
    lockstep: bool | None = None  # compare step by step (xpcnn.tools.lockstep); None: for float32 only
    threshold: float | None = None  # lockstep's failure ratio (default xpcnn.tools.lockstep.DEFAULT_THRESHOLD)


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


def _compiles_by_default(backend_name: str) -> bool:
    """Whether the backend of that name compiles its steps unless told not to (JAX)."""
    try:
        return bool(adapter_for(backend_name).compiles_by_default)
    except Exception:  # an unknown name: resolving the backend reports it
        return False


def check_options(options: RunOptions, job: Job | None = None) -> None:
    """The checks of the options that are not Config fields (those are the Config's).  On a
    data-parallel rank (``job``) the combinations that data parallelism excludes are refused, and
    only rank 0, the one that writes, checks ``out``."""
    _refuse(options.reduction and job is None, "--reduction", "--reduction goes with --distributed")
    with options_named():
        for name in ("rtol", "atol"):
            if getattr(options, name) is not None:
                check_number(name, getattr(options, name), "[0, inf)")
        if options.threads is not None:
            check_integer("threads", options.threads, 1)
        if options.chunk is not None:
            check_integer("chunk", options.chunk, 1)
    split, compare = options.threads not in (None, 1) or options.chunk, options.compare
    backend_name = options.backend or default_backend_name(options.device)
    _refuse(options.threads not in (None, 1) and wants_gpu(backend_name, options.device),
            "--threads", "--threads splits each batch over CPU cores; drop it for a GPU")
    _refuse(split and options.compile is None and job is None and not compare and _compiles_by_default(backend_name),
            "--threads" if options.threads not in (None, 1) else "--chunk",
            f"--threads/--chunk split each batch, and {backend_name} runs each step compiled on whole batches by "
            f"default: add --no-compile to split, or drop --threads/--chunk")
    _refuse(compare and split, "--compare",
            "--compare runs each backend on whole batches, single-threaded; drop --threads/--chunk")
    _refuse(options.compile and split, "--compile",
            "--compile runs whole batches through the compiled step; drop --threads/--chunk")
    _refuse(compare and options.resume, "--compare", "--compare and --resume cannot be combined")
    _refuse(compare and options.settings.get("schedule") == "plateau", "--schedule",
            "--schedule plateau follows the validation loss, which --compare does not compute; choose another schedule")
    _refuse(compare and (options.backend or options.device), "--compare",
            "--compare names its own backends; drop --backend/--device")
    _refuse(options.init_from and options.resume, "--init-from",
            "--init-from starts a new run from a checkpoint's weights, --resume continues one; choose one")
    _refuse(options.init_from and options.settings.get("model") is not None, "--init-from",
            "--init-from takes the checkpoint's network; drop --model")
    if job is None or job.is_main:
        out = options.out or RUNS_ROOT
        problem = check_writable_dir(out)
        _refuse(problem, "--out", f"--out: {problem}")
        _refuse(options.out and not compare and another_run_in(options.out, options.resume), "--out",
                f"--out: {options.out} holds another run's checkpoint.npz, which this run would replace; choose "
                f"another folder (by default each run gets its own), or continue that run with --resume "
                f"{os.path.join(options.out, 'checkpoint.npz')}")
    if options.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot", "--plot needs matplotlib; install the 'plot' extra: "
                                       "pip install 'xpcnn[plot]'") from None
    if job is not None:
        _refuse(compare, "--compare", "--compare runs in one process; drop --distributed")
        _refuse(options.threads not in (None, 1), "--threads", "--threads with --distributed: ranks take the cores "
                "(one rank per core: mpiexec -n N); drop --threads (--chunk still cuts each rank's share, "
                "docs/distributed.md)")
        _refuse(options.compile, "--compile", "--compile with --distributed: the compiled step runs whole batches in "
                                              "one process; drop --compile")


RUNS_ROOT = "runs"  # where runs get their own folders; RUNS_ROOT/latest links to the newest


def another_run_in(out: str, resume: str | None) -> bool:
    """Whether folder ``out`` holds a checkpoint of a run other than the one ``resume`` continues
    (which writes back to its own file): a run never replaces another run's checkpoint."""
    existing = os.path.join(out, "checkpoint.npz")
    if not os.path.exists(existing):
        return False
    if resume is None or not os.path.exists(resume):
        return True
    # (a data-parallel rank resumes from rank 0's copy of the file: the same bytes)
    return not (os.path.samefile(existing, resume) or filecmp.cmp(existing, resume, shallow=False))


def fresh_run_folder(preset: str, root: str = RUNS_ROOT) -> str:
    """A new folder ``root/<YYYYmmdd-HHMMSS>-<preset>`` (``-2``, ``-3`` ... after it when taken), created."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(root, exist_ok=True)
    for count in itertools.count(1):
        path = os.path.join(root, f"{stamp}-{preset}" + (f"-{count}" if count > 1 else ""))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def link_latest(out: str, root: str = RUNS_ROOT) -> None:
    """Point ``root/latest`` at the run folder ``out`` (a relative symlink, replaced atomically) when
    ``out`` lies in ``root``; a ``latest`` that is a real folder, or a system without symlinks, is
    left as it is."""
    latest, out = os.path.join(root, "latest"), os.path.realpath(out)
    if os.path.dirname(out) != os.path.realpath(root) or os.path.basename(out) == "latest":
        return
    if os.path.exists(latest) and not os.path.islink(latest):
        return
    temporary = f"{latest}.{os.getpid()}.tmp"
    try:
        os.symlink(os.path.basename(out), temporary)
        os.replace(temporary, latest)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def data_spec(spec: str) -> str:
    """A ``--data`` as a checkpoint remembers it: a path made absolute (a resume may run elsewhere)."""
    return os.path.abspath(spec) if os.path.exists(spec) else spec


def place_run(options: RunOptions, job: Job | None = None) -> tuple[RunOptions, bool]:
    """The options with ``data`` and ``out`` filled in: the data a resumed run trained on (else
    "embedded"); the folder of a resumed checkpoint, else a fresh ``runs/<date>-<time>-<preset>``
    (created on the main process; True second when this call made it)."""
    data, out, made = options.data, options.out, False
    if options.resume and not (data and out):
        try:
            saved = read_checkpoint(options.resume)
        except CheckpointError as exc:
            raise UsageError("--resume", f"--resume: {exc}") from None
        if not data:
            data = saved.data_source or ""
        if not out:
            out = os.path.dirname(os.path.realpath(options.resume))  # (not the runs/latest link to it)
            out = out if os.path.isabs(options.resume) else os.path.relpath(out)
    if not out:
        main = job is None or job.is_main
        problem = check_writable_dir(RUNS_ROOT) if main else None
        _refuse(problem, "--out", f"--out: {problem}")
        label = "compare" if options.compare else options.preset or ("model" if options.settings.get("model") else
                                                                     "default")
        # (the other ranks of a data-parallel run write nothing: a placeholder)
        out, made = (fresh_run_folder(label), True) if main else (os.path.join(RUNS_ROOT, "latest"), False)
    return dataclasses.replace(options, data=data or "embedded", out=out), made


def _model_setting(value: Any) -> Any:
    """``model``: a spec as given, or the contents of a JSON file (compact) as the Config stores it."""
    if not isinstance(value, str) or not value.endswith(".json"):
        return value
    try:  # (a regular file of bounded size and nesting: xpcnn.nn.spec.read_model_file)
        return json.dumps(read_model_file(value), separators=(",", ":"))
    except SpecError as exc:
        raise UsageError("--model", f"--model: {exc}") from None


def run_config(options: RunOptions) -> Config:
    """The run's Config: the preset with ``settings``, or (``resume``) the checkpoint's with only
    ``epochs`` changed (the library's resume policy)."""
    unknown = [name for name in options.settings if name not in CONFIG_FIELDS]
    _refuse(unknown, "settings", f"settings: {', '.join(map(repr, unknown))} not configuration field(s)")
    settings = {name: _model_setting(value) if name == "model" else value for name, value in options.settings.items()}
    with options_named():
        if options.preset is not None:
            check_choice("preset", options.preset, tuple(PRESETS))
        try:
            if options.resume:
                config = resume_config(read_checkpoint(options.resume).config, **settings)
            else:
                config = dataclasses.replace(default_recipe(options.preset, settings.get("model"), options.data)[0],
                                             **settings)
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
        return datasets.load(spec or "embedded", layout=layout, classes=classes)
    except datasets.DataError as exc:
        raise UsageError(option, f"{option}: {exc}") from None
    except MemoryError:
        raise UsageError(option, f"{option}: {spec}: the data does not fit in the memory available") from None


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
    for warning in check_data(config, dataset):
        print(warning, flush=True)
    if options.init_from:
        model, notices = init_model(options.init_from, config)
        config = dataclasses.replace(config, model=compact_architecture(model))
        for notice in notices:
            print(notice, flush=True)
    else:
        try:
            model = build_model(config)
        except ValueError as exc:  # SpecError: a spec or preset that does not fit the images
            raise UsageError("--model" if config.model else "--preset",
                             (f"--model: {exc}" if config.model else f"--preset {config.preset}: {exc}")
                             + layout_fit(config, dataset)) from None
    problem = last_batch_problem(model, training_count(config, dataset), config.batch_size)
    _refuse(problem, "--batch-size", f"--batch-size: {problem}")
    if not wants_gpu(options.backend or default_backend_name(options.device), options.device):
        check_batch_memory(config, model)  # (a GPU's own memory is its backend's to report)
    return config, model


def check_data(config: Config, dataset: datasets.Dataset) -> list[str]:
    """The checks of the data as a whole (one line each; xpcnn.data.dataset): float pixels that look
    unscaled (unless normalized), a layout that is most likely wrong, a training split of one class
    (UsageErrors); and the warnings, returned: classes without training images."""
    problem = None if config.normalize else datasets.float_range_problem(dataset)
    _refuse(problem, "--data", f"--data: {problem}")
    problem = datasets.layout_problem(dataset)
    _refuse(problem, "--layout", f"--layout: {problem}")
    present = set(dataset.train.labels.tolist()) if len(dataset.train) else set()
    _refuse(len(present) == 1, "--data", f"--data: {dataset.source}: every training label is "
                                         f"{next(iter(present), 0)}, one class: a classifier needs at least 2")
    return datasets.label_warnings(dataset)


def layout_fit(config: Config, dataset: datasets.Dataset) -> str:
    """When the network does not fit the images as read but would fit the other --layout: the words
    that say so (else '')."""
    other = datasets.other_layout(dataset)
    if other is None or config.model is None and config.preset in ("default", "article"):
        return ""
    try:
        build_model(dataclasses.replace(config, image_shape=other[1]))
    except (ValueError, ConfigError):
        return ""
    return (f" (the images are read as {dataset.layout}, {datasets.shape_text(dataset.image_shape)}; "
            f"--layout {other[0]} reads them as {datasets.shape_text(other[1])}, which fits)")


def check_batch_memory(config: Config, model: Sequential) -> None:
    """Refuses a batch whose activations alone (each layer's output, kept for backward, and its
    gradient) would not fit in the memory this machine has free."""
    free = available_memory()
    if free is None:
        return
    itemsize = 8 if config.dtype == "float64" else 4
    need = 2 * config.batch_size * activation_values(model, config.image_shape) * itemsize
    _refuse(need > free, "--batch-size",
            f"--batch-size: a batch of {config.batch_size} needs about {bytes_text(need)} for its activations alone, "
            f"more than the {bytes_text(free)} of memory free: use a smaller --batch-size or network")


def init_model(path: str, config: Config) -> tuple[Sequential, list[str]]:
    """Fine-tuning: the network of checkpoint ``path`` with its trained weights, for a new run of
    ``config`` (the new data's images and classes): the same image shape, and when the number of
    outputs differs, the last Dense layer (and the binary task's sigmoid) replaced by a new head
    initialised from ``config.seed`` -- said in the notices returned."""
    try:
        saved = read_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError("--init-from", f"--init-from: {exc}") from None
    _refuse(saved.config.image_shape != config.image_shape, "--init-from",
            f"--init-from: the checkpoint's network takes {datasets.shape_text(saved.config.image_shape)} images; "
            f"this data has {datasets.shape_text(config.image_shape)}")
    model = saved.network().to("numpy", dtype=config.dtype)
    notices = [f"--init-from {path}: starting from its weights ({saved.config.preset}, "
               f"{saved.global_step} steps trained)"]
    if tuple(model.infer_shape(config.image_shape)) != (config.outputs,):
        layers = list(model.layers)
        if layers and layers[-1].name == "Sigmoid":
            layers.pop()
        last = next((index for index in range(len(layers) - 1, -1, -1) if layers[index].name == "Dense"), None)
        _refuse(last is None or last != len(layers) - 1, "--init-from",
                f"--init-from: the checkpoint's network ends in {layers[-1].name if layers else 'nothing'}, not a "
                f"Dense layer whose outputs could be replaced for {config.outputs} output(s)")
        assert last is not None
        old = cast("Dense", layers[last])
        head = Dense(old.in_features, config.outputs, bias=old.bias, init=Dense.initialiser(config.init),
                     rng=config.seed)
        layers[last:] = [head, Sigmoid()] if config.outputs == 1 else [head]
        model = Sequential(*layers).to("numpy", dtype=config.dtype)
        notices.append(f"--init-from: new head Dense({old.in_features} -> {config.outputs}) for {config.classes} "
                       f"classes{' (binary task)' if config.outputs == 1 else ''}; the checkpoint's had "
                       f"{old.out_features} output(s)")
    return model, notices


def choose_executor(options: RunOptions, backend: Backend, compare: bool = False) -> StepExecutor:
    """The step executor the options ask for: :func:`executors.default_executor
    <xpcnn.training.executors.default_executor>`, the one a ``Trainer`` given none uses too
    (compiled where the backend compiles by default or ``compile``; the whole batch on a GPU; on a
    CPU pieces of ``chunk`` images over at most ``threads`` threads).  Comparing backends, each
    runs whole batches: ``compile`` compiles the backends that can and runs the others eagerly."""
    wants_compiled = options.compile or (options.compile is None and executors.compiles_by_default(backend))
    if compare:
        return executors.compiled_executor(backend) if wants_compiled and executors.has_compiled_executor(backend) \
            else executors.WholeBatchStep()
    try:
        return executors.default_executor(backend, None, threads=options.threads, chunk=options.chunk,
                                          compile=options.compile)
    except BackendError as exc:
        raise Unavailable("--compile", str(exc)) from None
    except ValueError as exc:  # a flag that cannot apply to this backend's step
        raise UsageError("--threads" if options.threads is not None else "--chunk", str(exc)) from None


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
    trainer.data_source = data_spec(run.options.data or "embedded")  # what --resume trains on again
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
    options = run.options
    recipe = (f"preset {config.preset} (resumed)" if options.resume else
              default_recipe(options.preset, options.settings.get("model"), options.data,
                             options.settings.get("shift") is not None)[1])
    augmentation = (f"shifts of up to {config.shift} pixels" if config.shift else "no augmentation")
    return (f"xpcnn: {recipe}, task {config.task}, {trainer.backend.label}, {config.dtype}; "
            f"{training_count(config, dataset)} training / {len(dataset.validation) if dataset.validation else 0} "
            f"validation images ({dataset.source}); {config.epochs} epochs, batch {config.batch_size}, "
            f"{'nesterov ' if config.nesterov else ''}{config.optimizer} lr {config.lr}"
            + (f" ({schedule})" if (schedule := describe_schedule(config)) else "")
            + f", {augmentation}"
            + (f"; {executor}" if executor else "")
            + (f"; resuming at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}"
               if run.options.resume else ""))


def written_since(checkpoint: str, started: float, run: Run) -> bool:
    """Whether ``checkpoint`` is this run's: written since it ``started``, or the one it resumed
    from (a file left in ``--out`` by an earlier run is neither)."""
    try:
        written = os.path.getmtime(checkpoint)
    except OSError:
        return False
    resumed = run.options.resume is not None and os.path.abspath(run.options.resume) == os.path.abspath(checkpoint)
    return written >= started or resumed


def train_run(run: Run, trainer: Trainer) -> Outcome:
    """Fit ``trainer`` on the run's data (printing the header first, on the main process), a
    signal stopping it after a step (:func:`stop_on_signals`)."""
    checkpoint = os.path.join(run.options.out, "checkpoint.npz")
    started = time.time()
    main = trainer.is_main  # data-parallel ranks: only the main one prints
    if main:
        print(header(run, trainer), flush=True)
        print(f"network: {trainer.model.summary(trainer.config.image_shape, trainer.config.dtype).one_line()}; "
              f"{trainer.config.classes} classes; writing to {run.options.out}", flush=True)
        link_latest(run.options.out)
    with stop_on_signals(trainer) as caught:
        try:
            trainer.fit(run.dataset.train, run.dataset.validation)
        except Diverged as exc:
            last = f"; the last good checkpoint is {checkpoint}" if written_since(checkpoint, started, run) else ""
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
    made = False
    try:
        if job is None:
            options, made = place_run(options)
            check_options(options)
            run = prepare_run(options)
            trainer = start_trainer(run)
        else:
            run, trainer = _prepare_on_ranks(options, job)
    except BaseException:
        if made:  # no run started: leave no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(options.out)
        raise
    with trainer:
        return train_run(run, trainer)


def _prepare_on_ranks(options: RunOptions, job: Job) -> tuple[Run, Trainer]:
    """:func:`prepare_run` and :func:`start_trainer` on every rank: rank 0 reads a resumed
    checkpoint for all (no shared filesystem needed); the ranks gather their problems and each raises
    the same UsageError (naming the rank when only some have it); then they check that they run the
    same configuration from the same parameters (RankMismatch)."""
    shared = job.share_file(options.resume) if options.resume else None
    initial = job.share_file(options.init_from) if options.init_from else None
    trainer, error = None, None
    try:
        _refuse(options.resume and shared is None, "--resume", "--resume: rank 0 could not read the checkpoint")
        _refuse(options.init_from and initial is None, "--init-from",
                "--init-from: rank 0 could not read the checkpoint")
        options, _ = place_run(dataclasses.replace(options, resume=shared, init_from=initial), job)
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
