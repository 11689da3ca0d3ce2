"""Confirmation runs through real storage (study/confirm.py, study/budget.py): the claims, the
early stop, workers, resume, a real study."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.budget import claim_trial
from study.cells import CellKey
from study.confirm import study_decision
from study.decision import Plan
from study.locks import FileLock, NoLock, lock_path
from study.recommend import recommend
from study.record import CONFIRM, read_record
from study.runner import run_trials
from study.storage import open_storage

BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
#: A task where accuracy falls slowly with the batch and time falls fast.
VALUES = [0.96, 0.958, 0.955, 0.94, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5]
ACCURACY = dict(zip(BATCHES, VALUES, strict=True))
TIME = {b: 128.0 / b for b in BATCHES}


def test_lr_search_confirms_at_the_bucket_centre():
    rules = ("linear", "none")
    plan = Plan(10, 3, 0.01, scaling_rules=rules, lr_search_width=2.0)
    key = CellKey(64, "none", 1.5)
    assert plan.params(key) == {"batch_size": 64, "scaling_rule": "none", "lr_multiplier": 2.0}
    assert plan.user_attrs(CellKey(64, "none", -0.5))["lr_multiplier"] == pytest.approx(2**-0.5)
    assert Plan(10, 3, 0.01).params(key) == {"batch_size": 64}


def fake_objective(
    noise: float = 0.002, interrupt_at: set[int] | None = None, accuracy: dict | None = None
):
    """An objective like the real one (same parameters and record), instant."""
    accuracy = accuracy or ACCURACY

    def objective(trial: optuna.Trial) -> float:
        batch = trial.suggest_categorical("batch_size", BATCHES[:6])
        if interrupt_at and trial.number in interrupt_at:
            interrupt_at.discard(trial.number)
            raise KeyboardInterrupt
        rng = random.Random(trial.number)
        value = accuracy[batch] + rng.gauss(0.0, noise)
        time = TIME[batch] * (1 + 0.1 * rng.random())
        trial.set_user_attr("batch_size", batch)
        trial.set_user_attr("scaling_rule", "linear")
        trial.set_user_attr("train_time_s", time)
        trial.set_user_attr("val_accuracy", value)
        return value

    return objective


def make_study(url: str, confirm_runs: int = 3, tolerance: float = 0.01) -> optuna.Study:
    storage = open_storage(url, heartbeat_interval=1, grace_period=5)
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    study.set_user_attr("config", {"confirm_runs": confirm_runs, "tolerance": tolerance})
    study.set_user_attr("space", {"batch_sizes": BATCHES[:6], "scaling_rules": ["linear"]})
    return study


def by_phase(study: optuna.Study) -> tuple[list, list]:
    records = [read_record(t, default_rule="linear") for t in study.get_trials()]
    finished = [r for r in records if r.state in ("COMPLETE", "PRUNED")]
    return (
        [r for r in finished if r.phase == "search"],
        [r for r in finished if r.phase == CONFIRM],
    )


def assert_confirmed(
    study: optuna.Study, total: int, confirm_runs: int = 3, *, budget_ended_it: bool = False
) -> None:
    """Exact budget, a phase on every trial, candidates confirmed and none over-confirmed.

    ``budget_ended_it``: the exact budget may have ended a cell's confirmation part-way (when
    workers race, which cells lead when the budget runs out varies from run to run).
    """
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) <= total  # the study may stop early, once decided
    assert all(t.user_attrs.get("phase") in ("search", CONFIRM) for t in finished)
    search, confirm = by_phase(study)
    plan = Plan.of_study(study, total)
    assert plan is not None and len(search) >= min(total, plan.exploration)
    assert confirm, "no confirmation trial ran"
    confirmed = Counter(r.batch_size for r in confirm)
    for batch, n in confirmed.items():
        assert budget_ended_it or n >= confirm_runs, (batch, confirmed)
        # a look asks for exactly confirm_runs more runs: a run enqueued twice would pass it
        assert n <= Plan.looks * confirm_runs, f"batch {batch} confirmed {n} times"
    assert study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING)) == []


def test_a_study_is_decided_with_the_plan_it_stored_not_a_newer_default(sqlite_url):
    study = make_study(sqlite_url)
    default = Plan.of_study(study, 40)  # a study stored before plans were pinned
    assert default is not None
    assert (default.contenders, default.looks, default.exploration) == (2, 2, 5)
    study.set_user_attr("plan", {"contenders": 0, "looks": 3, "exploration_share": 1.0})
    pinned = Plan.of_study(study, 40)
    assert pinned is not None and (pinned.contenders, pinned.looks, pinned.exploration) == (0, 3, 6)
    run_trials(study, fake_objective(), total=40, lock=FileLock(lock_path_of(sqlite_url)))
    search, confirm = by_phase(study)
    assert len(search) == 6  # every cell, as stored
    assert min(r.number for r in confirm) > max(r.number for r in search[:6])
    assert len(study_decision(study, Plan.of_study(study, 40)).references) == 1  # no contender


def test_a_study_explores_then_confirms_and_stops_once_decided(sqlite_url):
    study = make_study(sqlite_url)
    ran = run_trials(study, fake_objective(), total=40, lock=FileLock(lock_path_of(sqlite_url)))
    assert_confirmed(study, 40)
    search, confirm = by_phase(study)
    first_confirm = min(r.number for r in confirm)
    # the exploration first: three quarters of the six cells
    assert len(search) == 5 and all(r.number < first_confirm for r in search)
    answer = recommend(study).to_dict()
    assert answer["decided"] and ran < 40  # decided: the rest of the budget is not spent
    assert answer["trials_used"] == ran
    assert answer["most_accurate"]["confirm_runs"] >= 3
    assert answer["budget"]["confirm_trials"] == len(confirm)
    again = run_trials(study, fake_objective(), total=40, lock=NoLock())
    assert again == 0  # a rerun of a decided study trains nothing


def test_a_noisy_study_keeps_going_while_undecided(sqlite_url):
    # batch 16 sits near the tolerance behind 8, everything larger far behind: its first look
    # (3 runs each) cannot decide it, so it and the leader 8 (16 is also 8's contender, the
    # next best by the search) get a second look (6 runs each), and so does the other contender
    edge = {**ACCURACY, 16: 0.955, 32: 0.90, 64: 0.88}
    study = make_study(sqlite_url)
    for b in BATCHES[:6]:  # the exploration covers every cell once
        study.enqueue_trial({"batch_size": b})
    run_trials(study, fake_objective(noise=0.006, accuracy=edge), total=40, lock=NoLock())
    clear = {**ACCURACY, 16: 0.955, 32: 0.90, 64: 0.88}
    quiet = make_study(sqlite_url.replace("study.db", "quiet.db"))
    for b in BATCHES[:6]:
        quiet.enqueue_trial({"batch_size": b})
    run_trials(quiet, fake_objective(noise=0.0005, accuracy=clear), total=40, lock=NoLock())
    edge_runs = Counter(r.batch_size for r in by_phase(study)[1])
    clear_runs = Counter(r.batch_size for r in by_phase(quiet)[1])
    # decided at the first look; 8, chosen over its contenders 16 and 32 on its first three
    # runs, gets three more for its estimate
    assert clear_runs == {8: 6, 16: 3, 32: 3}
    # kept going to the second look, where 16 is held against both other references
    assert edge_runs == {8: 6, 16: 6, 32: 6}
    assert recommend(quiet).to_dict()["decided"]


def lock_path_of(url: str) -> Path:
    return lock_path(url[len("sqlite:///") :])


def test_workers_claiming_at_once_never_enqueue_a_run_twice(sqlite_url):
    # 4 runs a look and noisy runs: confirmation has work for all three workers to race for
    make_study(sqlite_url, confirm_runs=4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:  # each worker its own connection, as separate processes have
            storage = open_storage(sqlite_url, heartbeat_interval=1, grace_period=5)
            study = optuna.load_study(study_name=None, storage=storage)
            lock = FileLock(lock_path_of(sqlite_url))
            run_trials(study, fake_objective(noise=0.01), total=30, lock=lock, poll_s=0.05)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    storage = open_storage(sqlite_url, heartbeat_interval=1, grace_period=5)
    study = optuna.load_study(study_name=None, storage=storage)
    assert_confirmed(study, 30, confirm_runs=4, budget_ended_it=True)


def test_resume_after_an_interrupted_confirmation_does_not_enqueue_again(sqlite_url):
    study = make_study(sqlite_url)
    lock = FileLock(lock_path_of(sqlite_url))
    with pytest.raises(KeyboardInterrupt):  # trial 7: the second confirmation run
        run_trials(study, fake_objective(interrupt_at={7}), total=20, lock=lock)
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.number for t in failed] == [7] and failed[0].user_attrs["phase"] == CONFIRM
    assert len(waiting) == 1 and waiting[0].user_attrs["phase"] == CONFIRM  # queued again
    cell = waiting[0].user_attrs["batch_size"]
    # a claim takes the queued retry and enqueues nothing of its own
    claim = claim_trial(study, 20, NoLock(), confirm=Plan.of_study(study, 20))
    assert claim.trial is not None and claim.trial.number == waiting[0].number
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    study.tell(claim.trial, state=TrialState.FAIL)  # killed again, with no retry left
    run_trials(study, fake_objective(), total=20, lock=lock)  # the rerun: one new run for it
    assert_confirmed(study, 20)
    confirm = by_phase(study)[1]
    assert cell in {r.batch_size for r in confirm}


def test_a_study_without_confirm_settings_has_no_confirmation_phase(sqlite_url):
    study = make_study(sqlite_url)
    study.set_user_attr("config", {})  # made before the confirmation phase existed
    run_trials(study, fake_objective(), total=8, lock=NoLock())
    search, confirm = by_phase(study)
    assert len(search) == 8 and confirm == []
    study2 = make_study(sqlite_url.replace("study.db", "other.db"))
    run_trials(study2, fake_objective(), total=8, lock=NoLock(), confirm=False)
    assert by_phase(study2)[1] == []


def run_digits(url: str, trials: int, out: Path) -> optuna.Study:
    """A small real digits study through ``run_study`` (SQLite, mlp, 1 epoch)."""
    from objectives.backend import TorchBackend
    from study.config import StudyConfig
    from study.orchestrate import run_study

    config = StudyConfig(
        trials=trials,
        model="mlp",
        hidden=(32,),
        epochs=1,
        max_batch_size=128,
        scaling="linear",
        sampler="random",
        confirm_runs=2,
        storage=url,
        artifact_dir="none",
        device="cpu",
    ).validate()
    with out.open("a") as log:
        return run_study(config, TorchBackend(), out=log)


def test_a_real_digits_study_confirms_its_best_cells_and_resumes_without_enqueueing_again(
    tmp_path,
):
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    study = run_digits(url, 10, tmp_path / "log.txt")  # explore 5, then confirmation
    assert_confirmed(study, 10, confirm_runs=2)
    search, confirm = by_phase(study)
    assert all(r.state == "COMPLETE" for r in confirm)  # never pruned
    seeds = [t.user_attrs["seed"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(set(seeds)) == len(seeds)  # fresh seeds: runs, not copies
    answer = recommend(study).to_dict()
    assert answer["most_accurate"] is not None and answer["most_accurate"]["confirm_runs"] >= 2
    before = {t.number: t.user_attrs.get("phase") for t in study.get_trials()}
    again = run_digits(url, 10, tmp_path / "log.txt")  # a finished study: nothing to do
    assert {t.number: t.user_attrs.get("phase") for t in again.get_trials()} == before
    more = run_digits(url, 11, tmp_path / "log.txt")  # resumed with a larger budget
    assert_confirmed(more, 11, confirm_runs=2)


def test_the_same_seed_and_values_give_the_same_trials(tmp_path):
    # speed enters the plan only through the batch sizes' order: the trials' times (here
    # random on every run) never change which runs are enqueued
    def trials_of(name: str) -> list:
        study = make_study(f"sqlite:///{tmp_path / name}")
        objective = fake_objective(noise=0.004)

        def timed(trial: optuna.Trial) -> float:
            value = objective(trial)
            trial.set_user_attr("train_time_s", random.random())  # a loaded or idle machine
            return value

        run_trials(study, timed, total=30, lock=NoLock())
        return [(t.number, t.params, t.user_attrs.get("phase")) for t in study.trials]

    assert trials_of("a.db") == trials_of("b.db")
