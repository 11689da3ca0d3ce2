"""The critical batch by branching: exact restores, the stated test, the command's answer."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.branch import BranchSettings, Run, _Continuations, branch_run, held_out
from objectives.data import place
from objectives.metrics import MSE, mse
from objectives.tasks import Task
from objectives.train import StepHook
from study.branch_report import BranchPoint, BranchResult, Comparison, Tolerances
from tests.conftest import run_script

# ---------------------------------------------------------------- small tasks


class Dropped(torch.nn.Module):
    """A classifier with dropout: its training draws from torch's random state."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def blobs_task(n: int = 480, seed: int = 0) -> Task:
    """Three Gaussian classes in 6 dimensions, a dropout MLP."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.randn(3, 6, generator=g) * 2
    x = centres[y] + torch.randn(n, 6, generator=g)
    splits = [TensorDataset(x[i::3].contiguous(), y[i::3].contiguous()) for i in range(3)]
    return Task("blobs", Dropped, *splits)


def line_task(n: int = 480) -> Task:
    """A noisy linear target: MSE loss and metric (minimised)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    splits = [TensorDataset(x[i::3].contiguous(), y[i::3].contiguous()) for i in range(3)]
    return Task("line", lambda: torch.nn.Linear(4, 1), *splits, loss=mse, metric=MSE)


class Sequences(Dataset):
    """``({"tokens": long[L]}, label)`` items of 3..12 tokens: dict inputs, a collate."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 13, (n,), generator=g).tolist()
        self.items = [torch.randint(1, 10, (length,), generator=g) for length in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        tokens = self.items[i]
        return {"tokens": tokens}, int(tokens[0] >= 5)


def pad(items: list) -> tuple[dict, torch.Tensor]:
    tokens = torch.nn.utils.rnn.pad_sequence([x["tokens"] for x, _ in items], batch_first=True)
    return {"tokens": tokens, "mask": tokens != 0}, torch.tensor([y for _, y in items])


class Pooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)
        mean = (e * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(torch.cat([e[:, 0], mean], dim=1))


def settings(task: Task, **overrides) -> BranchSettings:
    values = dict(
        reference_batch=8,
        reference_rule="sqrt",
        rules=("sqrt",),
        batch_sizes=(16, 32, 64, 128),
        memory_cap=32,  # 64 and 128 accumulate
        budget_samples=4 * len(task.train),
        points=3,
        window=0.05,
        repeats=2,
    )
    values.update(overrides)
    return BranchSettings(**values)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- exact state


def test_a_branch_at_the_references_own_batch_reproduces_its_next_steps():
    task = blobs_task()  # dropout: the random state must be restored too
    s = settings(task, reference_batch=16, optimizer="adam")
    train = place(task.train, "cpu")
    reference = Run.fresh(task, s, train, seed=3)
    reference.advance(16 * 25)  # into the second pass over the data: the order matters
    snapshot = reference.snapshot()
    torch.manual_seed(12345)  # whatever happens to the global random state in between
    reference.advance(16 * 20)
    expected = _params(reference.model)
    branch = Run.branch(snapshot, task, s, train, 16, "sqrt")
    branch.advance(16 * 20)
    assert branch.samples == reference.samples
    for a, b in zip(_params(branch.model), expected, strict=True):
        assert torch.equal(a, b)
    # the optimizer's state was carried over, not rebuilt: a fresh one would differ
    fresh = Run.branch(snapshot, task, s, train, 16, "sqrt")
    fresh.step.optimizer.state.clear()
    fresh.advance(16 * 20)
    assert not all(torch.equal(a, b) for a, b in zip(_params(fresh.model), expected, strict=True))


def test_a_branch_with_accumulation_trains_exactly_its_batch():
    task = line_task()
    s = settings(task, memory_cap=16)
    train = place(task.train, "cpu")
    reference = Run.fresh(task, s, train, seed=0)
    snapshot = reference.snapshot()
    run = Run.branch(snapshot, task, s, train, 64, "sqrt", stream_seed=5)
    run.advance(64 * 3 + 10)  # whole updates only
    assert run.samples == 64 * 3 and run.trained == 64 * 3


# ---------------------------------------------------------------- the stated test


def test_a_task_insensitive_to_the_batch_has_its_critical_batch_at_the_cap():
    task = blobs_task()
    s = settings(task, base_lr=1e-9, rules=("linear", "sqrt", "none"))  # nothing moves
    result = branch_run(task, s, tolerance=0.01, loss_tolerance=0.01)
    answer = result.answer()
    assert [p["critical_batch_size"] for p in answer["points"]] == [128, 128, 128]
    assert answer["recommended"]["batch_size"] == 128
    assert answer["schedule"] == [{"batch_size": 128, "start_fraction": 0.0}]


def test_a_task_with_a_small_critical_batch_has_it_found_near_the_reference():
    # SGD at one learning rate for every batch (rule none): a larger batch makes fewer
    # steps of the same size over the same samples, and falls behind while the loss falls.
    task = line_task()
    s = settings(
        task,
        optimizer="sgd",
        base_lr=0.002,
        reference_rule="none",
        rules=("none",),
        budget_samples=2 * len(task.train),
        points=2,
        window=0.1,
    )
    answer = branch_run(task, s, tolerance=10.0, loss_tolerance=0.05).answer()
    criticals = [p["critical_batch_size"] for p in answer["points"]]
    assert all(c <= 16 for c in criticals), criticals
    assert answer["recommended"]["batch_size"] <= 16
    behind = [b for p in answer["points"] for b in p["branches"] if not b["keeps_up"]]
    assert behind and all(b["loss_excess"] > 0.05 for b in behind)


def _honest_count(result) -> int:
    """What ``branch_run`` must count as trained: the reference's budget, every repeat of
    every branch, and each point's second-repeat continuation of the reference up to the
    longest window of the point (every comparison here stops after two repeats)."""
    assert all(len(c.branch_loss) == 2 for p in result.points for c in p.comparisons)
    branches = sum(2 * c.window for p in result.points for c in p.comparisons)
    continuations = sum(max(c.window for c in p.comparisons) for p in result.points)
    return result.budget_samples + branches + continuations


def test_a_batch_stops_at_the_first_rule_that_keeps_up_and_a_point_starts_at_the_last():
    # Nothing moves, so every batch keeps up with the first rule tried (the reference's):
    # the first point walks the ladder with that one rule, the later ones start at its top.
    task = blobs_task()
    s = settings(task, base_lr=1e-9, rules=("linear", "sqrt", "none"))
    result = branch_run(task, s, tolerance=0.01, loss_tolerance=0.01)
    branched = [[(c.batch_size, c.scaling_rule) for c in p.comparisons] for p in result.points]
    assert branched == [
        [(16, "sqrt"), (32, "sqrt"), (64, "sqrt"), (128, "sqrt")],
        [(128, "sqrt")],
        [(128, "sqrt")],
    ]
    assert result.samples_trained == _honest_count(result)
    assert result.recommended() == (128, "sqrt")


def test_a_point_whose_start_falls_behind_walks_down_to_the_first_batch_that_keeps_up():
    task = line_task()
    s = settings(
        task,
        optimizer="sgd",
        base_lr=0.0002,
        reference_rule="none",
        rules=("none",),
        budget_samples=4 * len(task.train),
        window=0.1,
    )
    result = branch_run(task, s, tolerance=10.0, loss_tolerance=0.05)
    tol = result.tolerances
    first, second = ([c.batch_size for c in p.comparisons] for p in result.points[:2])
    assert first == [16, 32, 64, 128] and result.points[0].critical(tol)[0] == 64
    assert second == [64, 32, 16]  # from the previous critical batch, down
    assert [tol.keeps_up(c) for c in result.points[1].comparisons] == [False, False, True]
    assert result.points[1].critical(tol)[0] == 16
    assert result.samples_trained == _honest_count(result)


def test_a_continuation_reads_a_shorter_window_after_a_longer_one_without_training_again():
    task = line_task()
    s = settings(task)
    train = place(task.train, "cpu")
    val = place(task.val, "cpu")
    snapshot = Run.fresh(task, s, train, seed=0).snapshot()

    def make(repeat: int) -> Run:
        return Run.branch(snapshot, task, s, train, 8, "sqrt", stream_seed=repeat)

    def measure(run: Run) -> tuple[float, float]:
        return held_out(run.model, val, task, s)

    refs = _Continuations(Run.branch(snapshot, task, s, train, 8, "sqrt"), snapshot, make, (32, 64))
    long = refs.at(1, 64, measure)
    short = refs.at(1, 32, measure)  # asked after the longer one
    assert refs.runs[1].trained == 64
    fresh = make(1)
    fresh.advance(32)
    assert short == measure(fresh)
    fresh.advance(32)
    assert long == measure(fresh)


def test_each_comparison_carries_a_standard_error_and_the_metric():
    clipped: list[float] = []

    def clip(model, optimizer):  # the task's step hook runs inside every branch's update
        clipped.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))

    task = Task(
        "seq",
        Pooled,
        Sequences(240, 0),
        Sequences(80, 1),
        Sequences(80, 2),
        collate=pad,
        unit="tokens",
        count=lambda x, y: x["mask"].sum(),
        step=StepHook(before_update=clip),
    )
    s = settings(task, batch_sizes=(16, 32), points=2, repeats=3)
    answer = branch_run(task, s, tolerance=1.0, loss_tolerance=1.0).answer()
    branches = [b for p in answer["points"] for b in p["branches"]]
    assert branches and answer["unit"] == "tokens"
    for b in branches:
        assert 2 <= b["repeats"] <= 3 and b["loss_excess_se"] is not None
        assert 0.0 <= b["metric"] <= 1.0 and 0.0 <= b["reference_metric"] <= 1.0
    assert answer["trainings"] > 1.0  # the reference plus the branches
    assert len(clipped) > answer["samples_trained"] // 32  # every update, every run


def test_the_critical_batch_stops_at_the_first_batch_that_falls_behind():
    tol = Tolerances(loss_tolerance=0.05, tolerance=0.01, confidence=0.95)

    def comparison(batch: int, excess: float) -> Comparison:
        return Comparison(
            batch,
            "sqrt",
            1e-3,
            64,
            branch_loss=[1 + excess, 1 + excess + 0.001, 1 + excess - 0.001],
            reference_loss=[1.0, 1.0, 1.0],
            branch_metric=[0.9] * 3,
            reference_metric=[0.9] * 3,
        )

    point = BranchPoint(0.5, 100, 8, [comparison(16, 0.0), comparison(32, 0.2)])
    point.comparisons.append(comparison(64, 0.0))  # keeps up, but after a failure
    assert point.critical(tol) == (16, 16)
    result = BranchResult(
        "t", "accuracy", "maximize", 8, "sqrt", 64, 1000, 2500,
        [BranchPoint(0.0, 0, 8, [comparison(16, 0.2)]), point, point], tol, 1e-3, 32,
    )  # fmt: skip
    answer = result.answer()
    assert answer["recommended"]["batch_size"] == 16
    assert answer["schedule"] == [
        {"batch_size": 8, "start_fraction": 0.0},
        {"batch_size": 16, "start_fraction": 0.5},
    ]
    assert answer["trainings"] == 2.5


# ---------------------------------------------------------------- the command


def test_the_command_prints_writes_and_stores_its_answer(tmp_path: Path):
    out = tmp_path / "branch.json"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "--task", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "2",
        "--max-batch-size", "64", "--device", "cpu", "--branch-points", "2",
        "--branch-repeats", "2", "--output", out, "--storage", url, "--study-name", "b",
    ]  # fmt: skip
    done = run_script("branch.py", *args)
    assert done.returncode == 0, done.stderr
    assert "critical batch:" in done.stdout and "trainings" in done.stdout
    answer = json.loads(out.read_text())
    assert {"recommended", "schedule", "points", "trainings"} <= answer.keys()
    assert set(answer["recommended"]) == {"batch_size", "scaling_rule", "lr"}
    assert all(set(p) == {"batch_size", "start_fraction"} for p in answer["schedule"])
    assert answer["schedule"][0]["start_fraction"] == 0.0
    assert len(answer["points"]) == 2 and isinstance(answer["trainings"], float)
    study = optuna.load_study(study_name="b", storage=url)
    assert study.user_attrs["branch"]["recommended"] == answer["recommended"]
    from study.report.summary import branch_lines

    shown = branch_lines(study)  # the run's summary shows it beside the study's answer
    assert len(shown) == 1 and "by branching first" in shown[0]
    assert f"batch {answer['recommended']['batch_size']} " in shown[0]
    again = run_script("branch.py", *args)  # its own file is replaced; a study resumed
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--branch-repeats", "1"], "--branch-repeats 1 must be at least 2"),
        (["--branch-window", "0.9"], "--branch-window 0.9"),
        (["--reference-batch-size", "12"], "not a power of two"),
        (["--loss-tolerance", "-1"], "--loss-tolerance -1"),
    ],
)
def test_bad_branch_flags_are_one_line_and_exit_2(flags: list[str], words: str):
    done = run_script("branch.py", "--task", "digits", *flags)
    assert done.returncode == 2
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- batch-size schedules


def test_a_schedules_updates_are_exactly_the_scheduled_sizes():
    from objectives.train import StepHook, TrainSettings, train_model

    micro_sizes: list[int] = []
    updates: list[tuple[int, int, float]] = []  # (samples, micro-batches, lr)

    def record_loss(losses, outputs, targets, model):
        micro_sizes.append(len(losses))
        return losses

    def record_update(model, optimizer, update):
        updates.append((sum(micro_sizes), len(micro_sizes), update.lr))
        micro_sizes.clear()

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)
    data = TensorDataset(x, y)
    hook = StepHook(loss=record_loss, before_update=record_update)
    task = Task("t", lambda: torch.nn.Linear(6, 3), data, data, data, step=hook)
    phases = ((8, 8, 1e-3), (8, 8, 1e-3), (32, 16, 2e-3), (32, 16, 2e-3))
    settings = TrainSettings(
        epochs=4, batch_size=32, micro_batch_size=16, lr=2e-3, batch_phases=phases
    )
    train = place(data, "cpu")
    result = train_model(task.build_model(), train, train, settings, task=task)
    expected = [(8, 1, 1e-3)] * (100 // 8) * 2 + [(32, 2, 2e-3)] * (100 // 32) * 2
    assert updates == expected
    assert result.optimizer_steps == len(expected)
    assert result.samples_seen == sum(u[0] for u in updates)


def test_a_schedule_is_parsed_placed_on_epochs_and_timed_from_its_phases():
    from study.batch_schedule import parse_schedule, schedule_speeds

    schedule = parse_schedule(" 32@0, 128@0.2,512@0.5 ")
    assert schedule.label == "32@0,128@0.2,512@0.5"
    assert schedule.epoch_batches(5) == (32, 128, 128, 512, 512)
    assert schedule.shares(5) == {32: 0.2, 128: 0.4, 512: 0.4}
    speeds = {b: {"samples_per_s": r, "rates": [r, r / 2]} for b, r in ((32, 100.0), (512, 400.0))}
    timed = schedule_speeds(speeds, ["32@0,512@0.5"], epochs=4)
    assert timed["32@0,512@0.5"]["samples_per_s"] == pytest.approx(160.0)
    assert timed["32@0,512@0.5"]["rates"] == pytest.approx([160.0, 80.0])
    assert "32@0,128@0.2,512@0.5" not in schedule_speeds(speeds, [schedule.label], 5)


def test_a_space_without_a_schedule_is_stored_and_read_as_before():
    from study.batch_schedule import with_schedule
    from study.space import BatchSpace, build_space

    space = build_space(8, 64, 1, 1000, "search", "--max-batch-size")
    stored = space.to_dict()
    assert "schedules" not in stored  # older studies' attributes, unchanged
    assert BatchSpace.from_dict(stored) == space and space.choices == [8, 16, 32, 64]
    scheduled = with_schedule(space, "8@0,64@0.5")
    assert BatchSpace.from_dict(scheduled.to_dict()).choices == [8, 16, 32, 64, "8@0,64@0.5"]


def test_a_schedule_cell_goes_through_a_study_with_workers_and_resume(tmp_path: Path):
    from study.cells import study_records

    url = f"sqlite:///{tmp_path / 's.db'}"
    flags = [
        "--task", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "4",
        "--max-batch-size", "64", "--device", "cpu", "--batch-schedule", "8@0,64@0.5",
        "--storage", url, "--artifact-dir", "none", "--confirm-runs", "2",
        "--scaling", "sqrt", "--pruner", "none", "--sampler", "grid",
    ]  # fmt: skip
    first = run_script("run_study.py", *flags, "--trials", "6", "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "schedules ['8@0,64@0.5']" in first.stdout
    second = run_script("run_study.py", *flags, "--trials", "8")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout
    study = optuna.load_study(study_name="batch-size", storage=url)
    records = study_records(study)
    scheduled = [r for r in records if r.batch_schedule == "8@0,64@0.5"]
    assert scheduled and all(r.batch_size == 64 for r in scheduled)
    assert any(r.state == "COMPLETE" for r in scheduled)
    assert "schedule 8@0,64@0.5" in first.stdout + second.stdout  # its trial line
    assert study.user_attrs["space"]["schedules"] == ["8@0,64@0.5"]


def test_a_study_made_before_schedules_resumes_and_refuses_one_added_later():
    from study.config import StudyConfig, differences

    old = StudyConfig().identity()
    del old["batch_schedule"]  # what a study created before schedules stored
    assert differences(old, StudyConfig().identity()) == []
    added = differences(old, StudyConfig(batch_schedule="8@0,64@0.5").identity())
    assert added == ["--batch-schedule None (stored) vs '8@0,64@0.5' (now)"]
