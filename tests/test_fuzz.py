"""The fuzz stage: seeded flag values and storage URLs against the bad-input contract.

A seeded generator draws :data:`NUMBER_CASES` command lines of odd numbers (NaN, infinities,
``-0``, ``1e308``, huge and negative integers, words, Unicode digits) for the numeric flags of
``run`` (three in five), ``probe`` and ``noise-scale``, and :data:`URL_CASES` storage URLs
(odd schemes, user-info with passwords however written, query strings with secrets, empty and
odd paths) for ``run`` and ``report``. Each case runs in-process through the real entry point
(``batchsize_study.commands``), in an empty folder, and must hold the contract of
``tests/test_bad_input.py``: exit code 0 or 2, stderr at most one line, never a traceback, never
an internal error, no secret of the URL printed. Every command uses a task whose factory fails
(``fuzz_task.py:fails``), so a command line that passes every check ends there (a run's after
its storage was opened) with exit 2, before any training; a run's settings must then be
storable as strict JSON (no NaN or infinity in what the study would keep).

The seed is fixed, so a failure is reproduced by its case id; ``BATCHSIZE_FUZZ_SEED`` draws
another set.
"""

from __future__ import annotations

import json
import os
import random
import signal

import pytest

from batchsize_study import commands
from study.cli import parse_config

SEED = int(os.environ.get("BATCHSIZE_FUZZ_SEED", "21"))
NUMBER_CASES = 500
URL_CASES = 250

#: Secrets written into the URLs; none may be printed, whole or in part (8+ characters).
SECRETS = ("s3cretpw", "hunter22", "tok9Kq4Zx", "xK8%40pw7")
FAILING_TASK = "def fails():\n    raise KeyError('no such dataset')\n"
QUIET = ["--task", "fuzz_task.py:fails", "--artifact-dir", "none", "--checkpoint-dir", "none"]

#: The numeric flags of each entry point the number cases draw from.
PROBE_FLAGS = (
    "--min-batch-size",
    "--max-batch-size",
    "--timed-steps",
    "--memory-budget",
    "--memory-margin",
    "--seed",
    "--synthetic-classes",
)
NOISE_FLAGS = (
    "--epochs",
    "--batch-size",
    "--lr",
    "--b-small",
    "--b-big",
    "--repeats",
    "--relative-error",
    "--max-seconds",
    "--seed",
)
NUMERIC_FLAGS = (
    "--trials",
    "--epochs",
    "--steps",
    "--base-lr",
    "--base-batch-size",
    "--min-batch-size",
    "--max-batch-size",
    "--max-accumulation",
    "--memory-budget",
    "--memory-margin",
    "--lr-search-width",
    "--tolerance",
    "--confidence",
    "--confirm-runs",
    "--warmup-epochs",
    "--heartbeat-interval",
    "--grace-period",
    "--workers",
    "--seed",
    "--synthetic-samples",
    "--hidden",
)
ODD_NUMBERS = (
    "nan",
    "-nan",
    "NaN",
    "inf",
    "-inf",
    "+Infinity",
    "-0",
    "-0.0",
    "0",
    "1e308",
    "-1e308",
    "1e400",
    "1e-320",
    "1e24",
    str(2**31 - 1),
    str(2**31),
    str(2**63),
    str(10**30),
    "-1",
    "-2147483649",
    "0.5",
    "3.5",
    "0x10",
    "1_000",
    " 7",
    "",
    "abc",
    "１２",  # fullwidth digits: int() accepts them
    "٣",  # an Arabic-Indic three
    "8,16",
    "6GiB",
    "1e3TiB",
)


def _number(rng: random.Random) -> str:
    """An odd value, or a random one of random magnitude and sign."""
    if rng.random() < 0.6:
        return rng.choice(ODD_NUMBERS)
    if rng.random() < 0.5:
        return str(rng.choice((-1, 1)) * rng.randrange(10 ** rng.randrange(1, 40)))
    return f"{rng.choice(('', '-'))}{rng.random():.3f}e{rng.randrange(-400, 400)}"


def number_case(rng: random.Random, flags: tuple[str, ...] = NUMERIC_FLAGS) -> list[str]:
    """One to three numeric flags with odd values (``--budget steps`` when ``--steps``)."""
    argv: list[str] = []
    for flag in rng.sample(flags, rng.randrange(1, 4)):
        argv += [flag, _number(rng)]
        if flag == "--steps":
            argv += ["--budget", "steps"]
    return argv


SCHEMES = (
    "sqlite",
    "sqlite+pysqlite",
    "SQLite",
    "postgresql",
    "postgresql+psycopg",
    "postgres",
    "mysql",
    "journal",
    "file",
    "http",
    "x-y+z",
    "",
)
USERINFO = (
    "",
    "alice@",
    "alice:s3cretpw@",
    "alice:hunter22@tok9Kq4Zx@",
    ":s3cretpw@",
    "alice:xK8%40pw7@",
    "alice:@",
    "@",
)
HOSTS = ("127.0.0.1:9", "localhost:9", "[::1]:9", "127.0.0.1:abc", "", "127.0.0.1:99999")
PATHS = ("", "/", "//", "/db", "/s.db", "/dir/", "/:memory:", "/../x.db", "/a b.db", "/%00")
QUERIES = (
    "",
    "?",
    "?sslmode=disable",
    "?auth_token=s3cretpw",
    "?client_secret=tok9Kq4Zx&sslmode=require",
    "?api-key=hunter22",
    "?s3cretpw",
    "?password=s3cretpw&password=hunter22",
    "?timeout=5&x-token=tok9Kq4Zx",
    "?a=b=s3cretpw",
    "?&&=",
)


def url_case(rng: random.Random) -> str:
    """A storage URL of random parts (a journal file gets no secret: its path is shown)."""
    scheme = rng.choice(SCHEMES)
    if scheme == "journal":
        return "journal://" + rng.choice(PATHS + ("//", "/x.log", "//tmp/../x.log"))
    head = f"{scheme}://" if scheme or rng.random() < 0.5 else ""
    return head + rng.choice(USERINFO) + rng.choice(HOSTS) + rng.choice(PATHS) + rng.choice(QUERIES)


def _cases() -> list:
    rng = random.Random(SEED)
    cases = []
    for i in range(NUMBER_CASES):  # three in five for run, one each for probe and noise-scale
        entry = ("run", "run", "run", "probe", "noise")[i % 5]
        flags = {"run": NUMERIC_FLAGS, "probe": PROBE_FLAGS, "noise": NOISE_FLAGS}[entry]
        cases.append(pytest.param(entry, number_case(rng, flags), id=f"number-{entry}-{i}"))
    for i in range(URL_CASES):
        entry = "run" if i % 2 == 0 else "report"
        cases.append(pytest.param(entry, ["--storage", url_case(rng)], id=f"url-{entry}-{i}"))
    return cases


CASES = _cases()
ENTRIES = {
    "run": commands.run,
    "report": commands.report,
    "probe": commands.probe,
    "noise": commands.noise_scale,
}


@pytest.mark.parametrize("entry, argv", CASES)
def test_fuzzed_flags_and_urls_keep_the_contract(entry, argv, tmp_path, monkeypatch, capsys):
    (tmp_path / "fuzz_task.py").write_text(FAILING_TASK)
    monkeypatch.chdir(tmp_path)
    if entry == "run":
        argv = [*argv, *QUIET]
    elif entry in ("probe", "noise"):
        argv = [*argv, "--task", "fuzz_task.py:fails"]
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = ENTRIES[entry](argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()
    shown = out + err
    assert code in (0, 2), shown
    assert len(err.strip().splitlines()) <= 1, err
    assert "Traceback" not in shown and "internal error" not in shown, shown
    for secret in SECRETS:
        assert secret not in shown, shown
    if entry == "run" and "the factory raised KeyError" in err:  # it passed every check
        config = parse_config(argv)
        json.dumps(config.to_dict(), allow_nan=False)  # what the study would store


def test_the_fuzz_stage_has_its_counts():
    assert len(CASES) == NUMBER_CASES + URL_CASES
    assert len({c.id for c in CASES}) == len(CASES)
