"""Training: configuration and presets, the Trainer (a loop that only loops), step executors
(how a step runs) and extensions (everything else the loop does).

=====================  ==========================================================================
module                 what it holds
=====================  ==========================================================================
``config``             :class:`Config` (checked fields, the task -> loss rule), ``PRESETS``,
                       the resume policy (:func:`resume_config`), the validators of numbers
``builders``           the run's model, loss and optimizer from its Config
``run``                run assembly: a run from its options, checked before training, trained
                       (what ``xpcnn train`` does; data-parallel and compiled runs too)
``trainer``            :class:`Trainer`: the loop, evaluation, save and resume
``executors``          the step-executor contract; :class:`WholeBatchStep`, :class:`SplitStep`
``extensions``         the extension protocol; divergence check, evaluator, progress bar,
                       printed and JSON-lines logs, checkpoints, metrics, plots, early stop
``schedules``          the learning-rate schedules (extensions): exp, step, cosine, plateau,
                       each after an optional linear warm-up
``snapshot``           the checkpoint record, and the check of every field when it is read
``metrics``            confusion matrix and the final evaluation's result
``hostmem``            keep freed host memory for the next step (entry points only)
=====================  ==========================================================================
"""

from xpcnn.data.transforms import random_shift
from xpcnn.training.builders import build_loss, build_model, build_optimizer
from xpcnn.training.config import PRESETS, SCHEDULES, TASKS, Config, ConfigError, ResumeMismatch, resume_config
from xpcnn.training.executors import SplitStep, StepExecutor, WholeBatchStep, make_executor
from xpcnn.training.extensions import (
    Checkpointer,
    Diverged,
    DivergenceCheck,
    EarlyStopping,
    Evaluator,
    Extension,
    FinalEvaluation,
    Lambda,
    LogReport,
    MetricsWriter,
    PlotReport,
    PrintReport,
    ProgressBar,
    standard_extensions,
)
from xpcnn.training.metrics import Evaluation, confusion_matrix
from xpcnn.training.schedules import (
    Clock,
    CosineAnnealing,
    ExponentialDecay,
    ReduceOnPlateau,
    Schedule,
    StepDecay,
    schedule_from_config,
)
from xpcnn.training.trainer import Interrupted, Trainer, TrainState, config_from_checkpoint

__all__ = [
    "random_shift", "build_loss", "build_model", "build_optimizer", "PRESETS", "SCHEDULES", "TASKS", "Config",
    "ConfigError",
    "ResumeMismatch", "resume_config", "SplitStep", "StepExecutor", "WholeBatchStep", "make_executor",
    "Checkpointer", "Diverged", "DivergenceCheck", "EarlyStopping", "Evaluator", "ExponentialDecay", "Extension",
    "FinalEvaluation", "Lambda", "LogReport", "MetricsWriter", "PlotReport", "PrintReport", "ProgressBar",
    "standard_extensions", "Evaluation", "confusion_matrix", "Clock", "CosineAnnealing", "ReduceOnPlateau",
    "Schedule", "StepDecay", "schedule_from_config", "Interrupted", "Trainer", "TrainState",
    "config_from_checkpoint",
]
