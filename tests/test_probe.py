"""The hardware probe: a cap that really fits, a sane memory fit, the knee rule, no trace left.

The accuracy test does not trust the probe's own instrument: it re-runs a plain training step
at the cap and at twice the cap, each in a fresh process, and reads the operating system's
resident-memory high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), with
glibc told to return every block of 64 KiB or more to the system when freed
(``MALLOC_MMAP_THRESHOLD_``), so that resident memory follows the live tensors. That path
shares nothing with the probe: not the profiler, not the fit, not the step code, not even the
project's imports (the same MLP is built from ``torch.nn``; its repr is compared).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from batchsize_study import commands
from objectives.probe import probe_batch_size
from objectives.probe_memory import ProbeError, batch_ladder, fit_memory
from objectives.probe_table import ProbeResult
from objectives.tasks import Task, load_task
from study.units import parse_bytes
from tests.conftest import run_script, script_env

MiB = 1024**2
#: A wide MLP on the synthetic task: activations dominate, so a small budget binds.
WIDE = dict(hidden=(2048,), synthetic_features=256)
WIDE_BUDGET = 40 * MiB

#: A plain training step (with its evaluation batch) of the same model, measured by the OS.
#: Only torch is imported: no project code runs in that process.
RSS_STEP = r"""
import gc, json, sys
import torch
import torch.nn.functional as F
from torch import nn

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

x_all, y_all = torch.randn(2456, 256), torch.randint(0, 4, (2456,))

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 4))

def step_peak(batch):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    base = status("VmRSS")
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    index = torch.randperm(len(y_all))[:batch]
    x, y = x_all[index], y_all[index]
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (loss / batch).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        (model(x).argmax(dim=1) == y).sum()
    return status("VmHWM") - base

step_peak(64)  # one-time library set-up (code pages, thread pools) is not a step's memory
print(json.dumps({"model": str(build()), "peak": step_peak(int(sys.argv[1]))}))
"""


@pytest.fixture(scope="module")
def wide_task() -> Task:
    return load_task("synthetic", **WIDE)


@pytest.fixture(scope="module")
def wide_result(wide_task: Task) -> ProbeResult:
    return probe_batch_size(wide_task, memory_budget=WIDE_BUDGET, timed_steps=1)


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits")


def _os_step_peaks(*batch_sizes: int) -> list[dict]:
    """Resident-memory peak of one plain step per batch size, each in a fresh process (so no
    earlier step's pages are reused); the processes run side by side."""
    env = script_env()
    env.update(
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS=str(torch.get_num_threads()),  # as many threads as the probe had
        KINETO_LOG_LEVEL="6",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RSS_STEP, str(b)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in batch_sizes
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    return results


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK),
    reason="needs Linux /proc/self/clear_refs to reset the resident-memory high-water mark",
)
def test_a_step_at_the_cap_fits_the_budget_and_twice_the_cap_does_not(wide_result, wide_task):
    cap = wide_result.max_batch_size
    assert 2 * cap <= wide_result.search_limit, "the budget should bind before the data does"
    at_cap, twice = _os_step_peaks(cap, 2 * cap)
    assert at_cap["model"] == twice["model"] == str(wide_task.build_model())
    at_cap, twice = at_cap["peak"], twice["peak"]
    assert at_cap <= WIDE_BUDGET < twice
    # The probe's own measurement at the cap agrees with the OS's within a tenth.
    probe_at_cap = next(r.measured_bytes for r in wide_result.rows if r.batch_size == cap)
    assert probe_at_cap <= WIDE_BUDGET
    assert abs(at_cap - probe_at_cap) <= 0.1 * probe_at_cap


def test_the_memory_fit_is_positive_monotone_and_holds_the_optimizer_state(wide_result, wide_task):
    assert wide_result.fixed_bytes > 0 and wide_result.bytes_per_sample > 0
    predicted = [r.predicted_bytes for r in wide_result.rows]
    measured = [r.measured_bytes for r in wide_result.rows]
    assert predicted == sorted(set(predicted)), "prediction grows strictly with the batch"
    assert measured == sorted(measured), "measured memory does not shrink with the batch"
    params = sum(p.numel() * p.element_size() for p in wide_task.build_model().parameters())
    # The intercept holds the parameters and Adam's moments (alive at the backward peak).
    assert 3 * params <= wide_result.fixed_bytes < WIDE_BUDGET
    # Near the cap, where it decides, the line matches the measured steps within 5%.
    cap = wide_result.max_batch_size
    for row in wide_result.rows:
        if row.batch_size >= cap // 4:
            assert abs(row.predicted_bytes - row.measured_bytes) <= 0.05 * row.measured_bytes
    assert wide_result.predicted_bytes(cap) <= WIDE_BUDGET


def test_a_trial_records_the_memory_the_probe_measured_for_its_step(wide_result, wide_task):
    """The trial's CPU peak is the probe's measure of the same step, less the evaluation batch
    the probe adds, so the report's memory figure and the probe's cap speak of one quantity."""
    from objectives.train import TrainSettings, train_task

    measured = {r.batch_size: r.measured_bytes for r in wide_result.rows}
    cap = wide_result.max_batch_size
    for size in (8, cap // 2, cap):
        settings = TrainSettings(epochs=1, batch_size=size, micro_batch_size=size, lr=1e-3)
        result = train_task(wide_task, settings)
        assert result.memory_source == "cpu_allocator_profile"
        if size == 8:  # the step's own peak sets both: the evaluation batch is too small
            assert abs(result.peak_memory_bytes - measured[8]) <= 0.02 * measured[8]
        assert 0.7 * measured[size] <= result.peak_memory_bytes <= 1.02 * measured[size]


def test_the_search_runs_about_log2_cap_steps_and_every_table_row_ran(wide_result):
    cap = wide_result.max_batch_size
    assert wide_result.steps_run <= math.log2(cap) + 4
    assert [r.batch_size for r in wide_result.rows] == batch_ladder(1, cap)
    assert all(r.samples_per_s and r.samples_per_s > 0 for r in wide_result.rows)
    assert wide_result.throughput_steps >= 2 * len(wide_result.rows)  # warm-up + timed


def test_the_knee_is_the_smallest_batch_within_ten_percent_of_the_best(wide_result):
    from objectives.speed import SpeedResult, SpeedRow, knee_from_timings

    def knee(points: list[tuple[int, float | None]], **kwargs) -> int:
        rows = [SpeedRow(b, rates=[] if s is None else [s]) for b, s in points]
        return knee_from_timings(SpeedResult(rows, rounds=1, order=[]), **kwargs)

    assert knee([(1, 100.0), (2, 180.0), (4, 950.0), (8, 1000.0), (16, 990.0)]) == 4
    assert knee([(1, 100.0), (2, 899.0), (4, 1000.0)]) == 4
    assert knee([(1, 100.0), (2, 900.0), (4, 1000.0)]) == 2
    assert knee([(1, None), (2, 5.0), (4, 4.0)], tolerance=0.0) == 2
    with pytest.raises(ValueError, match="no batch size has a measured throughput"):
        knee([(1, None)])
    with pytest.raises(ValueError, match="tolerance"):
        knee([(1, 1.0)], tolerance=1.0)
    assert wide_result.knee_batch_size <= wide_result.max_batch_size


def test_the_table_is_timed_in_interleaved_rounds_and_the_knee_uses_them(wide_result):
    """The probe's throughput comes from the answer's speed method: interleaved rounds, the
    median per batch with its range, the knee compared round by round."""
    from objectives.probe_table import SPEED_ROUNDS
    from objectives.speed import SpeedResult, knee_from_timings

    speed = SpeedResult.from_dict(wide_result.speed)
    assert speed.rounds == SPEED_ROUNDS and len(speed.order) == SPEED_ROUNDS
    assert [r.batch_size for r in speed.rows] == [r.batch_size for r in wide_result.rows]
    for row, timed in zip(wide_result.rows, speed.rows, strict=True):
        assert row.samples_per_s == timed.units_per_s
        assert timed.units_per_s_min <= timed.units_per_s <= timed.units_per_s_max
    assert wide_result.knee_batch_size == knee_from_timings(speed)
    assert "min-max" in wide_result.format_table()


def test_the_fit_is_exact_at_the_largest_step_and_cautious_from_the_flat_part():
    fit = fit_memory([(1, 1100), (8, 1800), (64, 7400)], held_bytes=1000)
    assert (fit.fixed_bytes, fit.bytes_per_sample) == (1000, 100)
    # Flat at small batches (the optimizer step's temporaries set the peak), then linear.
    points = [(1, 5000), (8, 5000), (64, 6400), (512, 50_000)]
    fit = fit_memory(points, held_bytes=4000)
    assert fit.predict(512) == 50_000 and fit.bytes_per_sample == 97  # the secant
    # Still in the flat part, the slope counts all of the peak above what stays held.
    fit = fit_memory(points[:2], held_bytes=4000)
    assert fit.predict(8) == 5000 and fit.bytes_per_sample == 125


def test_the_probe_builds_its_own_model_and_leaves_no_trace(digits):
    torch.manual_seed(1234)
    user_model = digits.build_model()
    user_optimizer = torch.optim.Adam(user_model.parameters(), lr=1e-3)
    x, y = digits.train.tensors
    F.cross_entropy(user_model(x[:32]), y[:32]).backward()
    user_optimizer.step()
    params_before = {k: v.clone() for k, v in user_model.state_dict().items()}
    moments_before = [s["exp_avg"].clone() for s in user_optimizer.state.values()]
    data_before = [t.clone() for t in digits.train.tensors]
    rng_before = torch.get_rng_state()
    built: list[torch.nn.Module] = []

    def build_model() -> torch.nn.Module:
        built.append(digits.build_model())
        return built[-1]

    task = Task("digits", build_model, digits.train, digits.val, digits.test, num_classes=10)
    with torch.no_grad():  # the caller's grad mode must not stop the probe, nor be changed
        result = probe_batch_size(
            task, memory_budget="64MiB", max_batch_size=100, measure_throughput=False
        )
        assert not torch.is_grad_enabled()

    assert built and all(m is not user_model for m in built)
    assert result.search_limit == 64 and result.max_batch_size == 64
    assert result.knee_batch_size is None and result.throughput_steps == 0
    assert torch.equal(torch.get_rng_state(), rng_before)
    for key, value in user_model.state_dict().items():
        assert torch.equal(value, params_before[key])
    for state, before in zip(user_optimizer.state.values(), moments_before, strict=True):
        assert torch.equal(state["exp_avg"], before)
    for tensor, before in zip(digits.train.tensors, data_before, strict=True):
        assert torch.equal(tensor, before)


def test_the_probe_says_what_it_is_doing_one_line_per_measured_batch_and_phase(digits):
    lines: list[str] = []
    result = probe_batch_size(
        digits, memory_budget="64MiB", max_batch_size=64, timed_steps=1, log=lines.append
    )
    assert lines[0].startswith(
        "budget 64.00 MiB (given memory budget); searching batch sizes 1..64"
    )
    searched = [line for line in lines if line.endswith("measured, fits")]
    assert len(searched) == result.steps_run  # one line per search step
    assert f"cap {result.max_batch_size}: the search limit" in lines[len(searched) + 1]
    timed = [line for line in lines if line.endswith("samples/s")]
    assert len(timed) == len(result.rows)
    assert lines[-1].startswith("done in ") and f"cap {result.max_batch_size}" in lines[-1]


def test_a_budget_below_the_smallest_step_raises_probe_error(digits):
    with pytest.raises(ProbeError, match=r"--memory-budget") as info:
        probe_batch_size(digits, memory_budget="100KiB")
    error = info.value
    assert isinstance(error, ValueError)
    assert error.budget_bytes == 100 * 1024 and error.batch_size == 1
    assert error.needed_bytes > error.budget_bytes
    assert "100.00 KiB" in str(error) and "smallest batch size 1" in str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6GiB", 6 * 1024**3),
        ("512MiB", 512 * MiB),
        ("512 mib", 512 * MiB),
        ("1.5GB", 1_500_000_000),
        ("4k", 4096),
        ("1048576", 1_048_576),
        (2048, 2048),
    ],
)
def test_parse_bytes_reads_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "6 gigs", "-1GiB", "0", "0.1B", "1e9", "6GiB!", True])
def test_parse_bytes_rejects_bad_sizes_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"memory size"):
        parse_bytes(text)


def test_bad_arguments_name_the_value_and_the_range(digits):
    with pytest.raises(ValueError, match=r"--memory-margin 1.5: use a fraction in \[0, 1\)"):
        probe_batch_size(digits, memory_margin=1.5)
    with pytest.raises(ValueError, match="larger than the training set"):
        probe_batch_size(digits, min_batch_size=10**6)
    with pytest.raises(ValueError, match="unknown optimizer"):
        probe_batch_size(digits, optimizer="lion")
    with pytest.raises(ValueError, match="--max-batch-size 4 must be at least --min-batch-size 8"):
        probe_batch_size(digits, min_batch_size=8, max_batch_size=4)


def test_probe_script_json_has_the_documented_keys():
    proc = run_script(
        "probe.py",
        *("--task", "digits", "--json", "--memory-budget", "64MiB", "--max-batch-size", "256"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in (
        "max_batch_size",
        "knee_batch_size",
        "fixed_bytes",
        "bytes_per_sample",
        "budget_bytes",
        "rows",
    ):
        assert key in data
    assert data["budget_bytes"] == 64 * MiB
    assert data["max_batch_size"] == 256  # the search limit binds: a digits step is small
    assert data["steps_run"] <= math.log2(data["max_batch_size"]) + 4
    for row in data["rows"]:
        assert set(row) == {"batch_size", "predicted_bytes", "measured_bytes", "samples_per_s"}
    assert data["speed"]["unit"] == "samples" and len(data["speed"]["rows"]) == len(data["rows"])
    assert ProbeResult.from_dict(data).to_dict() == data


def test_probe_script_rejects_a_bad_budget_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.probe(["--memory-budget", "6 gigs"])
    assert exit_info.value.code == 2
    assert "memory size '6 gigs' is not understood" in capsys.readouterr().err.splitlines()[-1]
    assert commands.probe(["--memory-budget", "100KiB"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("probe.py: error: memory budget 100.00 KiB") and error.count("\n") == 1


def test_variable_length_data_is_probed_at_its_longest_items():
    """With a collate, every probing batch of b samples is the b longest training items, so
    padding reaches the longest length the data has; throughput is in the task's unit."""
    from tests.test_contract import sequence_task

    task = sequence_task()
    pad = task.collate
    calls: list[list[int]] = []

    def recording(items):
        calls.append(sorted((len(x["tokens"]) for x, _ in items), reverse=True))
        return pad(items)

    task.collate = recording
    lengths = sorted(
        (len(task.train[i][0]["tokens"]) for i in range(len(task.train))), reverse=True
    )
    result = probe_batch_size(task, memory_budget="64MiB", max_batch_size=64, timed_steps=1)
    assert result.longest_items and result.unit == "tokens" and result.max_batch_size == 64
    assert calls and all(lengths_seen == lengths[: len(lengths_seen)] for lengths_seen in calls)
    assert {len(c) for c in calls} >= {1, 64}
    table = result.format_table()
    assert "longest training items" in table and "tokens/s" in table
