"""The flags of every command: ``run``'s (``scripts/run_study.py``), parsed into a validated
:class:`StudyConfig`, and those of ``plan``, ``probe``, ``report``, ``dashboard``,
``noise-scale`` and ``branch``, whose bodies are in :mod:`batchsize_study.commands`.

Every mistake ends in one line on stderr naming the flag and the fix, and exit code 2.

Example:
    >>> parse_config(["--trials", "5", "--epochs", "3"]).trials
    5
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from study.config import (
    BUDGETS,
    DEFAULT_STORAGE,
    DEFAULT_STUDY_NAME,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    ConfigError,
    StudyConfig,
)
from study.scaling import SCALING_CHOICES
from study.schedule import SCHEDULES
from study.units import parse_bytes
from study.workers import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: ``128,64`` -> ``(128, 64)`` (positive sizes)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive sizes, e.g. 128,64"
        )
    return values


#: Seeds go to Optuna's samplers, which take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


def seed_value(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed: use a whole number from 0 to {MAX_SEED}"
        )
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: use 1 to 65535, or 0 for any free port"
        )
    return value


#: ``--storage`` help: what a journal URL means, relative or absolute.
STORAGE_HELP = (
    "SQLAlchemy URL (sqlite:///FILE, postgresql://USER@HOST/DB), or journal:///FILE for an "
    "Optuna journal file; journal:///storage/x.log is relative to the current folder, "
    "journal:////abs/path/x.log absolute"
)


def byte_size(text: str) -> int:
    """argparse type: ``6GiB`` -> bytes (see :func:`study.units.parse_bytes`)."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_task_arguments(group, defaults: StudyConfig | None = None) -> None:
    """The flags that name a task and its model, shared by every script that builds one.

    The parsed namespace has the :class:`StudyConfig` field names, so
    ``objectives.backend.build_task(args)`` builds the task from it.
    """
    d = defaults or StudyConfig()
    group.add_argument(
        "--task",
        default=d.task,
        help="digits, synthetic, regression, charlm, mnist, fashion-mnist, cifar10, or "
        "package.module:factory / path/to/file.py:factory",
    )
    group.add_argument("--model", default=d.model, choices=MODELS, help="model for built-in tasks")
    group.add_argument(
        "--hidden", type=int_list, default=d.hidden, help="hidden sizes, e.g. 128,64"
    )
    group.add_argument("--synthetic-samples", type=int, default=d.synthetic_samples)
    group.add_argument("--synthetic-features", type=int, default=d.synthetic_features)
    group.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes)
    group.add_argument(
        "--data-dir",
        default=d.data_dir,
        help="folder of the image datasets (MNIST/raw, FashionMNIST/raw, cifar-10-batches-py)",
    )


def build_parser(prog: str = "run_study.py") -> OneLineParser:
    """The parser for every flag of a study run (defaults are :class:`StudyConfig`'s)."""
    d = StudyConfig()
    p = OneLineParser(
        prog=prog,
        description="Tune batch size and learning rate with an Optuna study (see README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("budget and storage")
    g.add_argument("--trials", type=int, default=d.trials, help="study total (finished trials)")
    g.add_argument(
        "--storage",
        default=None,
        help=STORAGE_HELP + "; default sqlite:///storage/<study-name>.db",
    )
    g.add_argument("--study-name", default=d.study_name, help="name of the study in the storage")
    g.add_argument(
        "--artifact-dir",
        default=d.artifact_dir,
        help="where the HTML report and figures are stored as study artifacts ('none' = off, "
        "as in dashboard.py)",
    )
    add_task_arguments(p.add_argument_group("task and model"), d)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    g.add_argument(
        "--base-lr", type=float, default=d.base_lr, help="learning rate at --base-batch-size"
    )
    g.add_argument("--base-batch-size", type=int, default=d.base_batch_size)
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="the optimizer's weight decay (default: torch's, 0 for sgd and adam, 0.01 adamw)",
    )
    g.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        choices=SCHEDULES,
        help="the LR over each trial's own updates: constant, or cosine/linear decay from the "
        "rule's value to --final-lr-fraction of it",
    )
    g.add_argument(
        "--final-lr-fraction",
        type=float,
        default=d.final_lr_fraction,
        help="where cosine and linear decay end, a fraction of the peak (default 0)",
    )
    g.add_argument(
        "--scaling",
        default=d.scaling,
        choices=SCALING_CHOICES,
        help="LR rule; auto = linear for SGD, sqrt for Adam/AdamW; search = sample the rule",
    )
    g.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    g = p.add_argument_group("batch-size space")
    g.add_argument("--min-batch-size", type=int, default=d.min_batch_size, help="a power of two")
    g.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="largest micro-batch, a power of two (default: measured by the hardware probe)",
    )
    g.add_argument(
        "--max-accumulation",
        type=int,
        default=d.max_accumulation,
        help="effective batches continue above the memory cap up to cap*K by accumulation",
    )
    g.add_argument("--memory-budget", type=byte_size, default=None, help="e.g. 6GiB (probe)")
    g.add_argument(
        "--memory-margin", type=float, default=d.memory_margin, help="free memory left unused"
    )
    g = p.add_argument_group("search")
    g.add_argument("--sampler", default=d.sampler, choices=SAMPLERS)
    g.add_argument("--pruner", default=d.pruner, choices=PRUNERS)
    g.add_argument(
        "--seed",
        type=seed_value,
        default=d.seed,
        help="seeds the sampler, each trial and the built-in tasks' data split (so a resume "
        "must keep it)",
    )
    g = p.add_argument_group("the answer")
    g.add_argument(
        "--confirm-runs",
        type=int,
        default=d.confirm_runs,
        help="complete, unpruned runs each promising cell gets (fresh seeds) before the answer "
        "names it",
    )
    g.add_argument(
        "--tolerance",
        type=float,
        default=d.tolerance,
        help="how far (in the metric's units) the fastest recommended cell may be from the most "
        "accurate",
    )
    g.add_argument(
        "--confidence",
        type=float,
        default=d.confidence,
        help="confidence of the answer's 'within tolerance' claim and of its intervals "
        "(default 0.95: a cell named within tolerance is truly outside in at most 5%% of studies)",
    )
    g = p.add_argument_group("workers")
    g.add_argument(
        "--heartbeat-interval",
        type=int,
        default=d.heartbeat_interval,
        help="seconds between heartbeats of a running trial",
    )
    g.add_argument(
        "--grace-period",
        type=int,
        default=d.grace_period,
        help="seconds without a heartbeat before a trial counts as dead (FAIL, retried)",
    )
    g.add_argument(
        "--workers", type=int, default=d.workers, help="worker processes on this machine"
    )
    g.add_argument(
        "--gpus",
        type=_gpu_list,
        default=None,
        help="one worker per listed GPU id (CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3",
    )
    g.add_argument(
        "--workers-per-gpu",
        type=int,
        default=d.workers_per_gpu,
        help="workers sharing each GPU of --gpus (small models)",
    )
    g.add_argument(
        "--devices-per-trial",
        type=int,
        default=d.devices_per_trial,
        help="devices one trial trains on, data-parallel (CPU: K processes; with --gpus: K "
        "GPUs per trial); batch sizes are then global (micro-batch x devices x accumulation)",
    )
    g.add_argument(
        "--collective-timeout",
        type=float,
        default=d.collective_timeout,
        help="seconds a rank of a trial on several devices waits for the others before the "
        "trial fails and is retried from its checkpoint",
    )
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="per-epoch trial checkpoints, so a retried trial resumes (default: next to the "
        "SQLite/journal file, else storage/checkpoints; 'none' = off)",
    )
    g = p.add_argument_group("data and precision")
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch missing image-dataset files (needs internet and pip install -e '.[vision]')",
    )
    g.add_argument(
        "--precision",
        default=d.precision,
        choices=PRECISIONS,
        help="fp32; bf16 = bfloat16 autocast; fp16 = float16 autocast + gradient scaler (CUDA)",
    )
    g.add_argument(
        "--compile", action="store_true", help="train through torch.compile (slow first epoch)"
    )
    g = p.add_argument_group("beyond the sweep")
    g.add_argument(
        "--objectives",
        type=_word_list,
        default=d.objectives,
        help="metric, or metric,time: optimise the task's validation metric (val_accuracy for "
        "classification) and with time also minimise train_time_s (a Pareto front; accuracy "
        "is accepted for metric). Optuna cannot prune trials of two objectives: pruning is "
        "then turned off, with a note",
    )
    g.add_argument(
        "--budget",
        default=d.budget,
        choices=BUDGETS,
        help="what every batch size gets: --epochs passes, or --steps optimizer updates",
    )
    g.add_argument("--steps", type=int, default=None, help="optimizer updates per trial")
    g.add_argument(
        "--warmup-epochs",
        type=int,
        default=d.warmup_epochs,
        help="ramp the LR linearly from --base-lr to the rule's value over W epochs (Goyal et al.)",
    )
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=d.warmup_steps,
        help="ramp the LR linearly from --base-lr to the rule's value over N updates",
    )
    g.add_argument(
        "--lr-search-width",
        type=float,
        default=d.lr_search_width,
        help="F > 1 samples an LR multiplier in [1/F, F] around the rule's value",
    )
    g.add_argument(
        "--batch-schedule",
        default=None,
        help="a batch-size schedule studied as one more cell, BATCH@START_FRACTION phases, e.g. "
        "32@0,128@0.2,512@0.5 (the branch command recommends one)",
    )
    g.add_argument(
        "--noise-scale",
        action="store_true",
        help="measure the gradient noise scale B_simple on each trial's final model",
    )
    return p


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _gpu_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: list GPU ids, e.g. 0,1,2,3")
    return values


def parse_config(argv: list[str] | None = None, prog: str = "run_study.py") -> StudyConfig:
    """Parse and validate flags; on a bad value print one line and exit with code 2."""
    parser = build_parser(prog)
    args = vars(parser.parse_args(argv))
    try:
        return StudyConfig(**args).validate()
    except ConfigError as exc:
        parser.error(str(exc))


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def plan_parser(prog: str = "plan.py") -> argparse.ArgumentParser:
    """The flags of ``run``, and ``--json``."""
    parser = build_parser(prog)
    parser.description = (
        "What a study with these flags will cost, before it runs: the probe's cap, each batch "
        "size's throughput, the space, the expected trainings and time, and cheaper settings. "
        "Trains nothing, creates no study and no file."
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def probe_parser(prog: str = "probe.py") -> argparse.ArgumentParser:
    """The flags of the hardware probe."""
    parser = OneLineParser(
        prog=prog,
        description="Find the largest batch size whose training step fits in memory, and the "
        "throughput of every power of two up to it.",
    )
    add_task_arguments(parser, StudyConfig(model="mlp"))
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="the trials' autocast (fp16 needs CUDA)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="probe through torch.compile, as trials would"
    )
    parser.add_argument(
        "--memory-budget",
        type=byte_size,
        help="bytes one training step may use, e.g. 6GiB, 512MiB or 1048576 "
        "(default: the device's free memory less --memory-margin)",
    )
    parser.add_argument(
        "--memory-margin",
        type=float,
        default=None,
        help="fraction of the free memory left unused when no --memory-budget is given "
        "(default 0.1)",
    )
    parser.add_argument("--min-batch-size", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--timed-steps", type=int, default=3, help="fewest timed steps per size")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def report_parser(prog: str = "report.py") -> argparse.ArgumentParser:
    """The report's flags."""
    parser = OneLineParser(
        prog=prog,
        description="Write the report of a batch-size study (HTML, text tables, or the "
        "answer as JSON).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=STORAGE_HELP)
    parser.add_argument("--study-name", default=DEFAULT_STUDY_NAME, help="study in the storage")
    parser.add_argument(
        "--out",
        default=None,
        help="HTML file to write (default: storage/<study-name>-report.html); with "
        "--format text or json, a file instead of the terminal",
    )
    parser.add_argument(
        "--format",
        choices=("html", "text", "json"),
        default="html",
        help="html: the report page; text: its tables; json: the study's recommendation "
        "(computed now when the study stores none)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file this tool did not write (never the study's "
        "own storage)",
    )
    return parser


def dashboard_parser(prog: str = "dashboard.py") -> argparse.ArgumentParser:
    """The dashboard's flags."""
    parser = OneLineParser(
        prog=prog,
        description="Serve optuna-dashboard on a batch-size study, with its report artifacts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=STORAGE_HELP)
    parser.add_argument(
        "--artifact-dir",
        default="storage/artifacts",
        help="folder of the report artifacts ('none' = off, as in run_study.py)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (this machine only)")
    parser.add_argument(
        "--port", type=port_number, default=8080, help="port (1-65535); 0 picks a free one"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return parser


def noise_scale_parser(prog: str = "noise_scale.py") -> argparse.ArgumentParser:
    """The flags of the gradient-noise-scale estimate."""
    p = OneLineParser(
        prog=prog,
        description="Estimate the gradient noise scale B_simple of a task, and the batch sizes "
        "it recommends.",
    )
    add_task_arguments(p, StudyConfig(model="mlp"))
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs of training after the first estimate"
    )
    p.add_argument("--batch-size", type=int, default=32, help="batch size of that training")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of that training")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--b-small", type=int, default=8, help="small batch of the estimator")
    p.add_argument("--b-big", type=int, default=128, help="big batch, a multiple of --b-small")
    p.add_argument(
        "--repeats", type=int, default=16, help="big batches per estimate before the first check"
    )
    p.add_argument(
        "--relative-error",
        type=float,
        default=0.2,
        help="add repeats until the standard error is at most this fraction of B_simple",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="time limit for the repeats of all estimates together (shared equally)",
    )
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def branch_parser(prog: str = "branch.py") -> argparse.ArgumentParser:
    """The flags of ``run`` (task, model, recipe, budget, --scaling, --tolerance, storage)
    and the branch command's own."""
    parser = build_parser(prog)
    parser.description = (
        "The critical batch by branching (Merrill et al. 2025): one reference run at a small "
        "batch, short branches into every larger power of two at several points of it; prints "
        "the critical batch at each point, a recommended constant batch and rule, and a "
        "batch-size schedule. With --storage the answer is stored with the study."
    )
    g = parser.add_argument_group("branching")
    g.add_argument(
        "--reference-batch-size",
        type=int,
        default=None,
        help="the reference run's batch, a power of two (default: the smallest of the space)",
    )
    g.add_argument("--branch-points", type=int, default=5, help="branch points along the run")
    g.add_argument(
        "--branch-window",
        type=float,
        default=0.02,
        help="samples each branch trains, a fraction of the budget (at least 2 updates)",
    )
    g.add_argument(
        "--branch-repeats",
        type=int,
        default=3,
        help="data orders each comparison is repeated with (its standard error; at least 2)",
    )
    g.add_argument(
        "--loss-tolerance",
        type=float,
        default=0.2,
        help="how far above the reference's held-out loss (a fraction of it) a branch may be "
        "and keep up",
    )
    g.add_argument("--output", default=None, help="write the answer to this JSON file")
    g.add_argument("--force", action="store_true", help="replace --output if it is not ours")
    return parser
