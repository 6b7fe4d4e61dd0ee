"""``xpcnn train`` / scripts/train.py and ``xpcnn predict`` / scripts/predict.py: argparse, then
:mod:`xpcnn.training.run` (or :func:`xpcnn.tools.parity.compare_run`, or
:class:`xpcnn.inference.Predictor`), their exceptions and outcomes mapped to exit statuses
(``TRAIN_STATUSES``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
from typing import TYPE_CHECKING

from xpcnn.backends import BACKENDS, DTYPES, Backend, BackendError, default_backend_name, resolve
from xpcnn.data import TASKS
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.io.files import check_writable_dir
from xpcnn.nn.spec import SPEC_HELP
from xpcnn.tools.parity import compare_run
from xpcnn.training import PRESETS
from xpcnn.training.config import SCHEDULES
from xpcnn.training.hostmem import keep_freed_memory
from xpcnn.training.run import Outcome, RunOptions, Unavailable, UsageError, place_run, train

if TYPE_CHECKING:
    from xpcnn.distributed import Job

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DIVERGED, EXIT_IO = 0, 1, 2, 3, 4
TRAIN_STATUSES = ("Exit status: 0 done (parity PASS), 1 parity FAIL, 2 usage error (bad flag, missing backend or GPU,\n"
                  "unreadable data, unwritable --out), 3 training diverged, 4 a checkpoint or data file failed\n"
                  "mid-run, 130 / 143 interrupted by SIGINT / SIGTERM after saving a resumable checkpoint.")


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a CNN on an image dataset (the embedded MNIST digits, IDX, .npz, an image folder,\n"
                    "CIFAR-10) on any array backend, or compare backends for parity.",
        epilog="examples:\n"
               "  python scripts/train.py                                   # embedded MNIST, NumPy, CPU\n"
               "  python scripts/train.py --eval-data ../shared/data/mnist  # + real MNIST test accuracy\n"
               "  python scripts/train.py --device cuda                     # CuPy on the GPU\n"
               "  python scripts/train.py --preset article                  # the article's network\n"
               "  python scripts/train.py --compare numpy,torch --dtype float64\n"
               "  python scripts/train.py --resume runs/latest/checkpoint.npz --epochs 20\n"
               "  python scripts/train.py --init-from runs/latest/checkpoint.npz --data my3.npz --lr 0.01\n"
               "  python scripts/train.py --preset lenet5 --eval-data ../shared/data/mnist\n"
               "  python scripts/train.py --data cifar10 --preset vgg\n"
               "  python scripts/train.py --data my_rgb.npz \\\n"
               "      --model conv32k3p1-relu-maxpool2-flatten-dense128-relu-dense\n\n"
               + SPEC_HELP + "\n\n" + TRAIN_STATUSES)
    p.add_argument("--backend", choices=BACKENDS, help="array library (default numpy; cupy when --device cuda)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or an array_api_strict device (device1, device2)")
    p.add_argument("--data", default="",
                   help="'embedded' (5,000 MNIST digits in the package; the default, or with --resume the data the "
                        "run trained on); a download: 'download' (MNIST), "
                        "'fashion-mnist', 'cifar10'; an IDX folder; a .npz (x_train, y_train, x_test, y_test); an "
                        "image folder (one subfolder of images per class); a CIFAR-10 binary .tar.gz")
    p.add_argument("--eval-data", help="data as for --data whose test split gives the final test accuracy")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto",
                   help="how 4-D image arrays are laid out: channels first (N, C, H, W) or last (N, H, W, C, as "
                        "Keras stores colour images); auto: channels last when the last axis is 1, 3 or 4 and "
                        "axis 1 is not")
    p.add_argument("--classes", type=int, metavar="K", help="the number of classes (default: the largest label + 1)")
    p.add_argument("--model", metavar="SPEC|FILE.json",
                   help="the network: a spec such as conv32k3p1-relu-maxpool2-flatten-dense128-relu-dense "
                        "(syntax below) or a JSON file of layer records (as checkpoints store them); default: "
                        "the preset's network; without --preset it trains with a recipe of its own (adam lr "
                        "3e-3, cosine schedule, 12 epochs, no shifts)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="network and hyper-parameters (default: 'default'; a preset's shifts apply only to the "
                        "data it was tuned on): 'default' conv 5x5x16-ReLU-maxpool-dense (MNIST); 'article' the "
                        "article's network (MNIST); 'lenet5' LeNet-5 adapted to the input size; 'vgg' a small "
                        "VGG for 3x32x32 colour images (batch norm, dropout); 'resnet20' He et al.'s CIFAR "
                        "ResNet-20 (residual blocks, 0.27M parameters); 'mobilenet' a small depthwise-separable "
                        "network (the last two for any CxHxW images)")
    p.add_argument("--task", choices=TASKS, help="binary (digit > 4, the article's) or multiclass")
    p.add_argument("--epochs", type=int, help="passes over the training data (preset default; compare mode: 1)")
    p.add_argument("--batch-size", type=int, help="images per gradient step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-decay", type=float,
                   help="multiply the learning rate by this each epoch (default preset 0.8, article 1.0); with "
                        "--schedule step or plateau, the factor of each cut")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="the learning rate over the run: exp (default) lr * decay^epoch; step lr * decay^floor(epoch "
                        "/ step-size); cosine from lr down to --lr-min, per step; plateau x decay when the validation "
                        "loss has not improved for more than --patience epochs (torch's ReduceLROnPlateau)")
    p.add_argument("--warmup", type=int, metavar="EPOCHS",
                   help="first raise the learning rate linearly, step by step, over this many epochs: "
                        "lr * (step + 1) / (warm-up steps); the schedule starts after it (default 0)")
    p.add_argument("--step-size", type=int, metavar="EPOCHS",
                   help="--schedule step: cut the learning rate every this many epochs (default 5)")
    p.add_argument("--patience", type=int, metavar="EPOCHS",
                   help="--schedule plateau: epochs without a better validation loss (by 0.01%%) that are tolerated; "
                        "the next one cuts the learning rate (default 2)")
    p.add_argument("--lr-min", type=float,
                   help="--schedule cosine: the rate it ends at; plateau: the lowest rate (default 0)")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam", "adamw"),
                   help="sgd (the article's rule), momentum, adam, adamw (decoupled weight decay)")
    p.add_argument("--shift", type=int, metavar="PIXELS",
                   help="augmentation: shift each training image by up to this many pixels (default: the "
                        "preset's on the data it was tuned on (2 for MNIST digits, 4 for CIFAR-10), else 0)")
    p.add_argument("--weight-decay", type=float, help="weight decay on every parameter (L2; decoupled for adamw)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each channel by the training split's mean and std (stored in checkpoints; "
                        "default: the preset's, on for vgg)")
    p.add_argument("--momentum", type=float, help="momentum for --optimizer momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="Nesterov momentum for --optimizer momentum (as torch.optim.SGD(nesterov=True))")
    p.add_argument("--init", choices=("uniform", "glorot", "he"),
                   help="weight initialiser (preset default: article uniform U[0,1), default he)")
    p.add_argument("--seed", type=int, help="seed for weights, batch order and augmentation (default 0)")
    p.add_argument("--dtype", choices=DTYPES, help="float32 (default) or float64 (default of --compare)")
    p.add_argument("--out", default="",
                   help="folder for metrics.json, checkpoint.npz, log.jsonl, plots (default: a new folder "
                        "runs/<date>-<time>-<preset>, runs/latest pointing at the newest; with --resume the "
                        "checkpoint's folder); a folder holding another run's checkpoint is refused")
    p.add_argument("--plot", action="store_true", help="write PNG plots into --out (needs matplotlib: xpcnn[plot])")
    p.add_argument("--compare", metavar="SPECS",
                   help="comma-separated backends to compare, e.g. numpy,torch or numpy,cupy or "
                        "numpy,array_api_strict:device1; an executor after @: numpy@threads=2, "
                        "numpy@chunk=16, jax@compiled")
    p.add_argument("--rtol", type=float, help="parity relative tolerance (default per dtype, see docs/parity.md)")
    p.add_argument("--atol", type=float, help="parity absolute tolerance (default per dtype)")
    p.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=None,
                   help="with --compare: every step, each backend starts from the first one's state and is "
                        "compared layer by layer in units of rounding (default for float32; docs/parity.md)")
    p.add_argument("--threshold", type=float,
                   help="lockstep: fail where a difference exceeds this many times the reference's own rounding "
                        "(default 256)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its checkpoint.npz (any backend; bitwise the run that was not "
                        "stopped; only --epochs may change; writes back to the checkpoint's folder)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="fine-tune: a new run starting from this checkpoint's network and weights, with new "
                        "hyper-parameters, data or classes (a new last Dense layer when the classes differ)")
    p.add_argument("--threads", type=int,
                   help="run the pieces of each batch (--chunk) on at most this many threads, one BLAS thread "
                        "each (CPU backends; the numbers do not depend on it; default: every core)")
    p.add_argument("--chunk", type=int, metavar="N",
                   help="run each batch as pieces of at most N images, gradients and BatchNorm statistics summed "
                        "in piece order (the whole-batch step up to float rounding; faster on a CPU, "
                        "docs/performance.md; default on a CPU: at most 64 images and at least two pieces; whole "
                        "batches on a GPU or compiled)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run each training step compiled by the backend's own compiler: jax.jit on JAX, one CUDA "
                        "graph per step on torch:cuda (the same step; docs/performance.md).  Default: on for JAX, "
                        "off elsewhere; --no-compile runs JAX eagerly.  With --compare: compile the backends that can")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n N python scripts/train.py --distributed ... "
                        "(each rank computes one share of every batch, BatchNorm synchronised; needs "
                        "xpcnn[mpi], docs/distributed.md)")
    p.add_argument("--reduction", choices=("gather", "allreduce", "nccl"),
                   help="with --distributed: how gradients are summed: gather (default; in rank order, the "
                        "same bits on any MPI library), allreduce (repeatable, not bitwise-equal), nccl (GPU ranks, "
                        "gradients stay on the GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    return p


CONFIG_FLAGS = ("task", "epochs", "batch_size", "lr", "lr_decay", "optimizer", "momentum", "seed", "init", "dtype",
                "weight_decay", "normalize", "model", "shift", "schedule", "warmup", "step_size", "patience", "lr_min",
                "nesterov")
OPTION_FLAGS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name != "settings")


def _options(args: argparse.Namespace) -> RunOptions:
    """The parsed flags as the run's options (the Config fields given among them in ``settings``)."""
    settings = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    return RunOptions(settings=settings, **{name: getattr(args, name) for name in OPTION_FLAGS})


def _one_line_error(prog: str, message: str) -> int:
    """A missing backend, GPU or compiler: one line (no usage block, the flags were fine), status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _backend_options(p: argparse.ArgumentParser) -> None:
    """--backend and --device, as predict and evaluate take them."""
    p.add_argument("--backend", choices=BACKENDS, help="array library (default numpy; cupy when --device cuda)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or an array_api_strict device")


def _chosen_backend(args: argparse.Namespace, prog: str) -> Backend | None:
    """The backend --backend/--device name, or None after printing the one-line reason it is unavailable."""
    try:
        return resolve(args.backend or default_backend_name(args.device), args.device)
    except BackendError as exc:
        _one_line_error(prog, str(exc))
        return None

def _exit_status(outcome: Outcome) -> int:
    if outcome.error:
        print(outcome.error, file=sys.stderr)
    return {"done": EXIT_OK, "diverged": EXIT_DIVERGED, "failed": EXIT_IO}.get(outcome.status, 128 + outcome.signal)


def train_main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """``train.py`` / ``xpcnn train``: parse -> :mod:`xpcnn.training.run` -> exit status.
    With ``--distributed`` every MPI rank runs this (:func:`_train_distributed`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if _asks_for_distributed(argv):
        from xpcnn.distributed import run_job

        return run_job(lambda job: _train_distributed(argv, prog, job), prog)
    p = build_parser(prog)
    options = _options(p.parse_args(argv))
    keep_freed_memory()  # the next step reuses this step's memory (xpcnn.training.hostmem)
    try:
        if options.compare:
            options = place_run(options)[0]  # (its folder for parity.json)
            return EXIT_OK if compare_run(options)["result"] == "PASS" else EXIT_FAIL
        return _exit_status(train(options))
    except Unavailable as exc:
        return _one_line_error(prog, str(exc))
    except UsageError as exc:
        p.error(str(exc))


def _asks_for_distributed(argv: list[str]) -> bool:
    """Whether the command line has --distributed (read before the real parse, which then runs
    with MPI up, so that only rank 0 prints a usage error)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--distributed", action="store_true")
    try:
        return pre.parse_known_args(argv)[0].distributed
    except SystemExit:
        return False


def _train_distributed(argv: list[str], prog: str, job: Job) -> int:
    """``train_main`` on one MPI rank (``job``: :class:`xpcnn.distributed.Job`).  Rank 0 alone
    prints: argparse's messages, and a problem of any rank while the ranks set up (every rank then
    exits 2, :func:`xpcnn.training.run.train`)."""
    from xpcnn.distributed import RankMismatch

    with contextlib.ExitStack() as quiet:
        if not job.is_main:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        args = build_parser(prog).parse_args(argv)  # the same argv everywhere: every rank fails alike, or none
    keep_freed_memory()
    try:
        return _exit_status(train(_options(args), job=job))
    except (UsageError, RankMismatch) as exc:
        if job.is_main:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def predict_main(argv: list[str] | None = None, prog: str = "predict.py") -> int:
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
    _backend_options(p)
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto", help="layout of 4-D array files")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout instead of lines")
    args = p.parse_args(argv)
    backend = _chosen_backend(args, prog)
    if backend is None:
        return EXIT_USAGE
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


def _image_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' (or 3x32x32) -> (3, 32, 32), for --image-shape."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,32,32), got {text!r}") from None
    if len(shape) != 3 or not all(1 <= d <= 4096 for d in shape):
        raise argparse.ArgumentTypeError(f"expected C,H,W, each in 1..4096, got {text!r}")
    return shape


def summary_main(argv: list[str] | None = None, prog: str = "xpcnn summary") -> int:
    """``xpcnn summary``: a network's layers with output shapes, parameters, multiply-adds and
    activation memory per image (:meth:`xpcnn.nn.Sequential.summary`), of a checkpoint or of a
    --model spec / --preset for --image-shape."""
    from xpcnn.training.builders import build_model
    from xpcnn.training.config import Config, ConfigError
    from xpcnn.training.snapshot import read as read_checkpoint

    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show a network's layers: output shape, parameters, multiply-adds and activation memory "
                    "per image, and the totals.",
        epilog="examples:\n"
               "  xpcnn summary runs/latest/checkpoint.npz\n"
               "  xpcnn summary --preset resnet20 --image-shape 3,32,32\n"
               "  xpcnn summary --model conv32k3p1-relu-maxpool2-flatten-dense --image-shape 1,28,28 --classes 10")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint.npz (or give --model / --preset)")
    p.add_argument("--model", metavar="SPEC|FILE.json", help="a network spec or JSON file of layer records")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a preset's network")
    p.add_argument("--image-shape", type=_image_shape, metavar="C,H,W", help="the images (default 1,28,28)")
    p.add_argument("--classes", type=int, metavar="K", default=10, help="the number of classes (default 10)")
    p.add_argument("--task", choices=TASKS, help="binary or multiclass (default: the preset's)")
    p.add_argument("--dtype", choices=DTYPES, help="the parameters' dtype for the memory figures (default float32)")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    args = p.parse_args(argv)
    if args.checkpoint and (args.model or args.preset or args.image_shape):
        p.error("give a checkpoint or --model/--preset with --image-shape, not both")
    if not args.checkpoint and not (args.model or args.preset):
        p.error("give a checkpoint, or --model SPEC or --preset NAME (with --image-shape)")
    try:
        if args.checkpoint:
            saved = read_checkpoint(args.checkpoint)
            config, model = saved.config, saved.network()
        else:
            from xpcnn.training.run import _model_setting

            fields = {"image_shape": args.image_shape or (1, 28, 28), "classes": args.classes}
            if args.task:
                fields["task"] = args.task
            if args.model:
                fields["model"] = _model_setting(args.model)
            config = dataclasses.replace(PRESETS[args.preset or "default"], **fields)
            model = build_model(config)
    except CheckpointError as exc:
        p.error(f"checkpoint: {exc}")
    except ConfigError as exc:
        p.error(f"--{exc.field.replace('_', '-')} {exc.problem}")
    except UsageError as exc:
        p.error(str(exc))
    except ValueError as exc:  # SpecError: a spec or preset that does not fit the images
        p.error(f"--model: {exc}" if args.model else f"--preset {args.preset}: {exc}")
    assert model is not None and isinstance(config, Config)
    summary = model.summary(config.image_shape, args.dtype or config.dtype)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else f"{summary}\n{summary.one_line()}")
    return EXIT_OK


def evaluate_main(argv: list[str] | None = None, prog: str = "xpcnn evaluate") -> int:
    """``xpcnn evaluate``: accuracy, loss, per-class precision and recall and the confusion matrix
    of a checkpoint's network on labelled data (:func:`xpcnn.tools.evaluate.evaluate`)."""
    from xpcnn.data import DataError
    from xpcnn.tools.evaluate import SPLITS, evaluate

    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a trained network on labelled data: accuracy, loss, per-class precision and "
                    "recall, the confusion matrix with class names.",
        epilog="examples:\n"
               "  xpcnn evaluate runs/latest/checkpoint.npz --data my_test.npz\n"
               "  xpcnn evaluate runs/latest/checkpoint.npz --data ../shared/data/mnist --backend torch --json")
    p.add_argument("checkpoint", help="a checkpoint.npz written by training")
    p.add_argument("--data", required=True, help="labelled data, as train's --data takes it")
    p.add_argument("--split", choices=SPLITS, default="auto",
                   help="which images: auto (the test split if the data has one, else all its images), test, "
                        "validation, train, all (training + validation)")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto", help="layout of 4-D image arrays")
    _backend_options(p)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    args = p.parse_args(argv)
    backend = _chosen_backend(args, prog)
    if backend is None:
        return EXIT_USAGE
    try:
        report = evaluate(args.checkpoint, args.data, backend, args.split, args.layout)
    except CheckpointError as exc:
        p.error(f"checkpoint: {exc}")
    except DataError as exc:
        p.error(f"--data: {exc}")
    print(json.dumps(report.as_dict(), indent=2) if args.json else report)
    return EXIT_OK


def export_main(argv: list[str] | None = None, prog: str = "xpcnn export") -> int:
    """``xpcnn export``: a checkpoint's network as an ONNX file (:mod:`xpcnn.tools.export`)."""
    from xpcnn.tools.export import OPSET, ExportError, export_checkpoint

    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Export a trained network as ONNX (opset {OPSET}, float32): input 'images' (N, C, H, W) "
                    "pixels in [0, 1], the run's normalisation inside the graph; output 'output' (logits, or "
                    "the binary task's sigmoid output).  Needs xpcnn[export].",
        epilog="example:\n  xpcnn export runs/latest/checkpoint.npz model.onnx")
    p.add_argument("checkpoint", help="a checkpoint.npz written by training")
    p.add_argument("output", help="the .onnx file to write")
    args = p.parse_args(argv)
    problem = check_writable_dir(os.path.dirname(os.path.abspath(args.output)))
    if problem:
        p.error(f"output: {problem}")
    try:
        written = export_checkpoint(args.checkpoint, args.output)
    except CheckpointError as exc:
        p.error(f"checkpoint: {exc}")
    except ExportError as exc:
        return _one_line_error(prog, str(exc))
    print(f"wrote {written['path']}: ONNX opset {written['opset']}, input images (N, "
          f"{', '.join(map(str, written['image_shape']))}) float32 in [0, 1], output (N, "
          f"{', '.join(map(str, written['output_shape']))}); {written['nodes']} nodes, "
          f"{written['parameters']:,} parameters")
    return EXIT_OK


COMMANDS = {"train": train_main, "predict": predict_main, "summary": summary_main, "evaluate": evaluate_main,
            "export": export_main}


USAGE = ("usage: xpcnn {train,predict,evaluate,summary,export} ...\n\n"
         "  train     train a network, fine-tune one, compare backends, resume (xpcnn train --help)\n"
         "  predict   classify images with a trained checkpoint (xpcnn predict --help)\n"
         "  evaluate  accuracy, loss, precision/recall, confusion matrix on labelled data (xpcnn evaluate --help)\n"
         "  summary   a network's layers: shapes, parameters, multiply-adds, memory (xpcnn summary --help)\n"
         "  export    write a checkpoint's network as ONNX (xpcnn export --help)")


def main(argv: list[str] | None = None) -> int:
    """The ``xpcnn`` console command: ``xpcnn train ...`` (``xpcnn train --help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:], prog=f"xpcnn {argv[0]}")
    asked = bool(argv) and argv[0] in ("-h", "--help")
    unknown = bool(argv) and not asked
    print(USAGE, file=sys.stderr if unknown else sys.stdout)
    if unknown:
        print(f"xpcnn: error: unknown command {argv[0]!r}", file=sys.stderr)
    return EXIT_OK if asked else EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
