"""The command line: ``batchsize-study run|probe|plan|report|dashboard|noise-scale|branch``.

Each command is also a script in ``scripts/`` (``python scripts/run_study.py`` is ``batchsize-study
run``) with the same flags. This module is the edge where the two sides meet: it parses flags,
hands the PyTorch backend (:class:`objectives.backend.TorchBackend`) to the torch-free
orchestrator, and prints. Only the commands that train import torch, and only when they run.

Example:
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: batchsize-study COMMAND [FLAGS]
    ...
    0
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from study import collector, safety
from study.cli import (
    branch_parser,
    dashboard_parser,
    fail,
    noise_scale_parser,
    parse_config,
    plan_parser,
    probe_parser,
    report_parser,
)
from study.config import (
    MAX_COUNT,
    ConfigError,
    StudyConfig,
    check_probe_settings,
)
from study.disk import DiskFullError, disk_full, is_disk_full
from study.noise_text import noise_scale_text
from study.workers import EXIT_USAGE

#: Exit code of an unexpected internal error (a bug: the traceback goes to a log file).
INTERNAL_ERROR_EXIT = 1
#: Exit code after Ctrl-C (or SIGTERM during a run).
INTERRUPTED_EXIT = 130
#: Exit code when the reader of the output has gone (``| head``): a shell's code for a
#: process ended by SIGPIPE (128 + 13), as Unix tools end.
BROKEN_PIPE_EXIT = 141
#: OS errors that are the machine's state rather than a bug: one line, exit 2.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE}
)


def guarded(command: Callable[..., int]) -> Callable[..., int]:
    """Run ``command`` so that nothing ends in a traceback.

    A full disk or a permission problem is one line and exit code 2, and so is running out of
    memory; Ctrl-C is one line and 130; output piped into a reader that has gone (``| head``)
    ends quietly with 141, as Unix tools do; any other unexpected exception is an internal
    error: one line naming the log file that holds the traceback (secrets scrubbed), exit
    code 1.
    """

    @functools.wraps(command)
    def wrapper(argv: list[str] | None = None, prog: str | None = None) -> int:
        prog = prog or command.__defaults__[-1]
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            code = command(args, prog=prog)
            sys.stdout.flush()  # here, so that a reader that has gone is caught below
            return code
        except SystemExit:  # (--help, a usage error) its output too may meet a closed pipe
            if not _flushed():
                raise SystemExit(BROKEN_PIPE_EXIT) from None
            raise
        except KeyboardInterrupt:
            print(f"\n{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT
        except BrokenPipeError:
            safety.silence_stdout()
            return BROKEN_PIPE_EXIT
        except DiskFullError as exc:
            print(f"{prog}: error: {safety.scrub(str(exc), safety.urls_in(args))}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                return safety.internal_error(prog, exc, args)
            where = f" ({exc.filename})" if exc.filename else ""
            text = safety.scrub(f"{exc.strerror}{where}", safety.urls_in(args))
            print(
                f"{prog}: error: {text}: free some space or fix the permissions, then run the "
                "same command again",
                file=sys.stderr,
            )
            return EXIT_USAGE
        except Exception as exc:
            if safety.is_out_of_memory(exc):
                print(safety.out_of_memory_line(prog, exc, args), file=sys.stderr)
                return EXIT_USAGE
            return safety.internal_error(prog, exc, args)

    return wrapper


def _check_count(flag: str, value: int | None, prog: str) -> None:
    """A count flag is at most :data:`study.config.MAX_COUNT` (what loops and tensors hold)."""
    if value is not None and value > MAX_COUNT:
        _usage_error(prog, f"{flag} {value} is above {MAX_COUNT}, the largest count a run holds")


def _flushed() -> bool:
    """Flush standard output; ``False`` (and stdout silenced) when its reader has gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        safety.silence_stdout()
        return False
    return True


def _usage_error(prog: str, message: str) -> NoReturn:
    """One line ``prog: error: message`` on stderr, exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _check_folder(flag: str, folder: str | Path | None, prog: str) -> None:
    problem = None if folder is None else safety.folder_problem(flag, folder)
    if problem:
        _usage_error(prog, problem)


def _task_config(args: argparse.Namespace, prog: str, **extra) -> StudyConfig:
    """The task, model and device flags of a script checked as a run would check them."""
    fields = ("task", "model", "hidden", "synthetic_samples", "synthetic_features")
    fields += ("synthetic_classes", "data_dir", "device", "optimizer", "seed")
    values = {name: getattr(args, name) for name in fields}
    try:
        return StudyConfig(**values, **extra).validate()
    except ConfigError as exc:
        _usage_error(prog, str(exc))


def _device(config: StudyConfig, prog: str) -> str:
    from objectives.backend import resolve_device

    try:
        return resolve_device(config.device)
    except ConfigError as exc:
        _usage_error(prog, str(exc))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@guarded
def run(argv: list[str] | None = None, prog: str = "run_study.py") -> int:
    """Run (or resume) a study: ``python scripts/run_study.py --trials 50``.

    Every folder the run will write is checked first; when the run fails before it stores a
    study, the storage file, lock and folders it created are removed again.
    """
    config = parse_config(argv, prog=prog)
    collector.pause()  # until the first trial: start-up makes nothing to collect
    try:
        return _run(config, prog)
    finally:
        collector.resume()


def _run(config: StudyConfig, prog: str) -> int:
    from objectives.backend import TorchBackend, checkpoint_folder

    if config.checkpoint_dir is not None:
        if config.checkpoint_dir.lower() != "none":
            _check_folder("--checkpoint-dir", config.checkpoint_dir, prog)
    else:  # the default, next to the storage file (whose own problems are reported first)
        storage_file = safety.storage_file(config.storage)
        if storage_file is None or not safety.folder_problem("", storage_file.parent):
            _check_folder("the default --checkpoint-dir", checkpoint_folder(config), prog)
    if config.artifact_dir.lower() != "none":
        _check_folder("--artifact-dir", config.artifact_dir, prog)
    _check_folder("--data-dir", config.data_dir, prog)
    _quiet_optuna()
    from objectives.torchrun import join_launched, launched, release_launched, serve_launched
    from study.orchestrate import STUDY_ERRORS, WorkersError, run_study

    backend = TorchBackend()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # e.g. Kubernetes: stop cleanly
    try:
        join_launched(config)  # under torchrun: one trial on all its processes
    except ConfigError as exc:
        fail(str(exc))
    if (launched() or (0,))[0] > 0:  # torchrun's other ranks train what rank 0 sends
        collector.resume()
        return serve_launched(config)
    leftovers = safety.Leftovers.before(config.storage)
    try:
        run_study(config, backend)
    except STUDY_ERRORS + backend.user_errors as exc:
        leftovers.remove()
        fail(safety.scrub(str(exc), [config.storage]))
    except WorkersError as exc:
        fail(safety.scrub(str(exc), [config.storage]), exc.code)
    except KeyboardInterrupt:
        leftovers.remove()
        print(
            "\ninterrupted: finished trials are stored; run the same command again to continue",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    except Exception as exc:
        leftovers.remove()
        if isinstance(exc, DiskFullError) or not is_disk_full(exc):
            raise
        raise _disk_full_error(exc, config.storage) from None
    except BaseException:
        leftovers.remove()
        raise
    finally:
        release_launched()  # under torchrun: the other ranks exit
    return 0


def _disk_full_error(exc: BaseException, storage: str) -> DiskFullError:
    """The one-line error of a write that failed for space somewhere in a run."""
    from study.orchestrate import storage_disk_full

    filename = getattr(exc, "filename", None)
    return disk_full(filename, "a file") if filename else storage_disk_full(storage)


@guarded
def plan(argv: list[str] | None = None, prog: str = "plan.py") -> int:
    """Estimate a study's cost with the flags of ``run``: ``batchsize-study plan --epochs 20``."""
    parser = plan_parser(prog)
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    try:
        config = StudyConfig(**args).validate()
    except ConfigError as exc:
        parser.error(str(exc))
    _quiet_optuna()
    from objectives.backend import TorchBackend
    from study.plan import make_plan

    backend = TorchBackend()
    try:
        found = make_plan(config, backend)
    except backend.user_errors as exc:
        fail(safety.scrub(str(exc), [config.storage or ""]))
    print(json.dumps(found.to_dict(), indent=2) if as_json else found.text())
    return 0


def _check_probe_flags(args: argparse.Namespace, prog: str) -> None:
    if args.memory_budget is not None and args.memory_margin is not None:
        _usage_error(
            prog,
            "--memory-margin applies to the detected free memory; with --memory-budget give "
            "the budget you want the step to fit",
        )
    if args.memory_budget is not None and args.memory_budget <= 0:
        _usage_error(prog, f"--memory-budget {args.memory_budget} must be positive, e.g. 6GiB")
    try:  # before the task is built; the probe checks the same for its Python callers
        check_probe_settings(
            args.min_batch_size, args.max_batch_size, args.timed_steps, _probe_margin(args)
        )
    except ConfigError as exc:
        _usage_error(prog, str(exc))


def _probe_margin(args: argparse.Namespace) -> float:
    """``--memory-margin``, or the default 0.1 when it is not given (it conflicts with a budget)."""
    return 0.1 if args.memory_margin is None else args.memory_margin


@guarded
def probe(argv: list[str] | None = None, prog: str = "probe.py") -> int:
    """Probe the hardware: the largest batch whose training step fits, and its speed."""
    args = probe_parser(prog).parse_args(argv)
    _check_probe_flags(args, prog)
    config = _task_config(args, prog, precision=args.precision)
    device = _device(config, prog)
    from objectives.backend import TorchBackend, build_task
    from objectives.probe import log_to_stderr, probe_batch_size

    try:
        task = build_task(config)
        result = probe_batch_size(
            task,
            optimizer=args.optimizer,
            device=device,
            memory_budget=args.memory_budget,
            memory_margin=_probe_margin(args),
            min_batch_size=args.min_batch_size,
            max_batch_size=args.max_batch_size,
            precision=args.precision,
            compile=args.compile,
            timed_steps=args.timed_steps,
            seed=args.seed,
            log=log_to_stderr if sys.stderr.isatty() else None,  # redirected: errors only
        )
    except TorchBackend.user_errors + (ValueError,) as exc:  # ProbeError, TaskError, ...
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_table())
    return 0


@guarded
def report(argv: list[str] | None = None, prog: str = "report.py") -> int:
    """Write a study's report (HTML, the same tables as text, or its answer as JSON); never
    creates or changes a study."""
    args = report_parser(prog).parse_args(argv)
    _quiet_optuna()
    from study.outputs import OutputError, check_output, write_atomic
    from study.report.data import study_recommendation
    from study.report.html import (
        ReportError,
        build_report,
        default_report_path,
        load_study_for_report,
        render_text_report,
        write_report,
    )

    try:
        if args.out is not None or args.format == "html":
            out = Path(args.out) if args.out else default_report_path(args.study_name)
            check_output("--out", out, storage_url=args.storage, force=args.force)
        study = load_study_for_report(args.storage, args.study_name)
        if args.format in ("text", "json"):
            if args.format == "json":
                answer = study_recommendation(study)
                if answer is None:
                    raise ReportError("no recommendation: the study stores none")
                text = json.dumps(answer, indent=2) + "\n"
            else:
                report_ = build_report(study, storage_url=args.storage, figures=False)
                text = render_text_report(report_)
            if args.out is None:
                sys.stdout.write(text)
                return 0
            path = Path(args.out)
            try:
                write_atomic(path, text, f"the {args.format} report")
            except DiskFullError:
                raise
            except OSError as exc:
                raise ReportError(f"--out {path}: cannot write ({exc.strerror})") from None
            print(f"wrote {path}")
            return 0
        path, built = write_report(study, out, storage_url=args.storage)
    except (ReportError, OutputError) as exc:
        print(f"{prog}: error: {safety.scrub(str(exc), [args.storage])}", file=sys.stderr)
        return EXIT_USAGE
    size_mb = path.stat().st_size / 1e6
    print(
        f"wrote {path} ({len(built.drawn)} figures, {size_mb:.1f} MB, opens offline); "
        f"{built.data.state_summary()}"
    )
    status = built.data.status_sentence()
    if status:
        print(status)
    return 0


@guarded
def dashboard(argv: list[str] | None = None, prog: str = "dashboard.py") -> int:
    """Serve optuna-dashboard on an existing study, bound to 127.0.0.1, with its artifacts."""
    args = dashboard_parser(prog).parse_args(argv)
    artifact_dir = None if args.artifact_dir.lower() == "none" else args.artifact_dir
    _check_folder("--artifact-dir", artifact_dir, prog)
    _quiet_optuna()
    from study.report.dashboard import make_dashboard_server
    from study.report.html import ReportError, open_existing_storage
    from study.storage import redact

    try:
        storage = open_existing_storage(args.storage)
    except ReportError as exc:
        print(f"{prog}: error: {safety.scrub(str(exc), [args.storage])}", file=sys.stderr)
        return EXIT_USAGE
    if artifact_dir is not None:
        try:
            Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _usage_error(prog, f"--artifact-dir {artifact_dir}: cannot create it ({exc.strerror})")
    try:
        server = make_dashboard_server(
            storage,
            artifact_dir=artifact_dir,
            host=args.host,
            port=args.port,
            quiet=not args.verbose,
        )
    except OSError as exc:
        print(
            f"{prog}: error: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
            "pass another --port, or --port 0 for a free one",
            file=sys.stderr,
        )
        return EXIT_USAGE
    host, port = server.server_address[:2]
    print(
        f"optuna-dashboard on http://{host}:{port}/dashboard/ (storage {redact(args.storage)}, "
        f"artifacts {artifact_dir or 'off'}); Ctrl-C to stop",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _check_noise_flags(args: argparse.Namespace, prog: str) -> None:
    for flag, value, least in (
        ("--epochs", args.epochs, 0),
        ("--batch-size", args.batch_size, 1),
        ("--b-small", args.b_small, 1),
        ("--repeats", args.repeats, 2),
    ):
        if value < least:
            _usage_error(prog, f"{flag} {value} must be at least {least}")
        _check_count(flag, value, prog)
    _check_count("--b-big", args.b_big, prog)
    if args.b_big <= args.b_small or args.b_big % args.b_small:
        _usage_error(
            prog,
            f"--b-big {args.b_big} must be a multiple of --b-small {args.b_small} above it, "
            f"e.g. {args.b_small * 16}",
        )
    if not (args.lr > 0 and math.isfinite(args.lr)):
        _usage_error(prog, f"--lr {args.lr} must be a positive number, e.g. 1e-3")
    if not (0 < args.relative_error < math.inf):
        _usage_error(prog, f"--relative-error {args.relative_error} must be positive, e.g. 0.2")
    if not (0 <= args.max_seconds < math.inf):
        _usage_error(prog, f"--max-seconds {args.max_seconds} must be 0 or more, e.g. 60")


@guarded
def noise_scale(argv: list[str] | None = None, prog: str = "noise_scale.py") -> int:
    """Estimate B_simple during a short training run and print the batch sizes it suggests.

    A model that diverged (loss not finite, or far above its start; e.g. ``--lr 1e6``) gives
    meaningless estimates: the command says so on stderr instead of recommending silently.
    """
    args = noise_scale_parser(prog).parse_args(argv)
    _check_noise_flags(args, prog)
    config = _task_config(args, prog)
    device = _device(config, prog)
    from objectives.backend import TorchBackend, build_task
    from objectives.noise import noise_scale_over_training

    try:
        task = build_task(config)
        if 2 * args.b_small > len(task.train):
            _usage_error(
                prog,
                f"--b-small {args.b_small} needs at least twice as many training samples "
                f"(the training set has {len(task.train)}): use a smaller --b-small",
            )
        result = noise_scale_over_training(
            task,
            args.epochs,
            args.batch_size,
            args.lr,
            args.optimizer,
            args.b_small,
            args.b_big,
            args.repeats,
            args.seed,
            device,
            target_relative_se=args.relative_error,
            max_seconds=args.max_seconds,
        )
    except TorchBackend.user_errors + (ValueError,) as exc:
        fail(str(exc))
    diverged = result.get("diverged")
    if diverged:
        print(
            f"warning: the model diverged during training ({diverged}), so these estimates "
            "and the recommended batch size are meaningless: lower --lr (e.g. 1e-3)",
            file=sys.stderr,
        )
    if not result["trusted"]:
        print(f"warning: {result['chosen_because']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(noise_scale_text(result, args.task, task.unit))
    return 0


#: The branch command's own flags (the rest are a study's).
_BRANCH_FLAGS = (
    "reference_batch_size",
    "branch_points",
    "branch_window",
    "branch_repeats",
    "loss_tolerance",
    "output",
    "force",
)


def _check_branch_flags(own: dict, prog: str) -> None:
    for flag, least in (("branch_points", 1), ("branch_repeats", 2)):
        value = own[flag]
        if value < least:
            _usage_error(prog, f"--{flag.replace('_', '-')} {value} must be at least {least}")
        _check_count(f"--{flag.replace('_', '-')}", value, prog)
    window = own["branch_window"]
    if not (math.isfinite(window) and 0 < window <= 0.5):
        _usage_error(prog, f"--branch-window {window:g}: use a fraction of the budget in (0, 0.5]")
    tol = own["loss_tolerance"]
    if not (math.isfinite(tol) and tol >= 0):
        _usage_error(prog, f"--loss-tolerance {tol}: use a fraction of at least 0, e.g. 0.2")
    ref = own["reference_batch_size"]
    if ref is not None and (ref < 1 or ref & (ref - 1)):
        _usage_error(prog, f"--reference-batch-size {ref} is not a power of two: use 8, 16, ...")


@guarded
def branch(argv: list[str] | None = None, prog: str = "branch.py") -> int:
    """Measure the critical batch by branching; print (and store) the answer."""
    parser = branch_parser(prog)
    args = vars(parser.parse_args(argv))
    own = {name: args.pop(name) for name in _BRANCH_FLAGS}
    _check_branch_flags(own, prog)
    stored = args["storage"] is not None
    try:
        config = StudyConfig(**args).validate()
    except ConfigError as exc:
        parser.error(str(exc))
    from study.outputs import OutputError, check_output, write_atomic

    if own["output"] is not None:
        try:
            check_output(
                "--output",
                own["output"],
                storage_url=config.storage if stored else None,
                force=own["force"],
            )
        except OutputError as exc:
            _usage_error(prog, str(exc))
    _check_folder("--data-dir", config.data_dir, prog)
    _quiet_optuna()
    from objectives.backend import TorchBackend
    from study.branch_run import BranchError, run_branch

    backend = TorchBackend()
    try:
        answer, text = run_branch(
            config,
            backend,
            store=stored,
            reference_batch_size=own["reference_batch_size"],
            points=own["branch_points"],
            window=own["branch_window"],
            repeats=own["branch_repeats"],
            loss_tolerance=own["loss_tolerance"],
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (BranchError, *backend.user_errors) as exc:
        fail(safety.scrub(str(exc), [config.storage]))
    print(text)
    if own["output"] is not None:
        write_atomic(own["output"], json.dumps(answer, indent=2) + "\n", "the branch answer")
        print(f"wrote {own['output']}")
    return 0


#: The console command's subcommands: name -> (function, one-line help).
COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "run": (run, "run or resume a study (scripts/run_study.py)"),
    "probe": (probe, "measure the largest batch that fits, and its speed (scripts/probe.py)"),
    "plan": (plan, "what a study will cost, before it runs (scripts/plan.py)"),
    "report": (report, "write a study's HTML or text report (scripts/report.py)"),
    "dashboard": (dashboard, "serve optuna-dashboard on a study (scripts/dashboard.py)"),
    "noise-scale": (noise_scale, "estimate the gradient noise scale (scripts/noise_scale.py)"),
    "branch": (branch, "the critical batch by branching, and a schedule (scripts/branch.py)"),
}


def main(argv: list[str] | None = None) -> int:
    """``batchsize-study COMMAND [FLAGS]``; ``batchsize-study COMMAND --help`` lists the flags."""
    try:
        code = _main(argv)
    except BrokenPipeError:  # the usage piped into a reader that has gone
        safety.silence_stdout()
        return BROKEN_PIPE_EXIT
    return code if _flushed() else BROKEN_PIPE_EXIT


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: batchsize-study COMMAND [FLAGS]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<12} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"batchsize-study: error: unknown command {argv[0]!r}: use one of "
                f"{', '.join(COMMANDS)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not argv:
            print(
                f"batchsize-study: error: give a command: {', '.join(COMMANDS)} "
                "(batchsize-study COMMAND --help lists its flags)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return 0
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:], prog=f"batchsize-study {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
