"""Search, then confirm (study/confirm.py): the plan, the claims, workers, resume, a real study."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import confirm
from study.budget import claim_trial
from study.confirm import CONFIRM, MAX_RUNS_FACTOR, ConfirmPlan, confirm_order, next_confirm
from study.locks import FileLock, NoLock, lock_path
from study.recommend import CellKey, cell_stats, recommend
from study.record import MetricInfo, TrialRecord, read_record
from study.runner import run_trials
from study.storage import open_storage

BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
#: A task where accuracy falls slowly with the batch and time falls fast.
VALUES = [0.96, 0.958, 0.955, 0.94, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5]
ACCURACY = dict(zip(BATCHES, VALUES, strict=True))
TIME = {b: 128.0 / b for b in BATCHES}


def record(batch: int, value: float | None, state: str = "COMPLETE", **kw) -> TrialRecord:
    return TrialRecord(
        batch_size=batch,
        scaling_rule="linear",
        val_metric=value,
        train_time_s=TIME[batch],
        state=state,
        **kw,
    )


def test_the_search_gets_its_share_rounded_up():
    plan = ConfirmPlan(total=50, confirm_runs=3, tolerance=0.01)
    assert plan.search_budget == 33
    assert [ConfirmPlan(t, 3, 0.01).search_budget for t in (1, 2, 4, 10, 20)] == [1, 2, 3, 7, 13]
    # a grid sampler covers its grid first (6 cells here), within the budget
    assert [ConfirmPlan(t, 3, 0.01, min_search=6).search_budget for t in (4, 8, 20)] == [4, 6, 13]


def test_candidates_alternate_the_best_and_the_fastest_plausible_cells():
    records = [record(b, ACCURACY[b]) for b in BATCHES[:5]] + [record(16, 0.957), record(16, 0.959)]
    cells = cell_stats(records)
    order = [c.batch_size for c in confirm_order(cells, MetricInfo(), tolerance=0.01)]
    # sigma of batch 16 is 0.001: plausible = within 0.01 + 2 * 0.001 of 0.960
    assert order == [8, 32, 16]
    # minimising the same numbers: 128 is the best, and nothing is near it
    mse = MetricInfo("mse", "minimize")
    assert [c.batch_size for c in confirm_order(cells, mse, tolerance=0.01)] == [128]


def test_next_confirm_waits_for_the_search_then_confirms_the_best_and_the_fastest_plausible():
    plan = ConfirmPlan(total=10, confirm_runs=3, tolerance=0.01)  # search: 7 trials
    records = [record(b, ACCURACY[b]) for b in BATCHES[:5]] + [record(16, 0.958)]
    assert next_confirm(plan, records) is None  # 6 search trials so far
    records.append(record(128, 0.9))
    assert next_confirm(plan, records) == CellKey(8, "linear")  # the best mean first
    records += [record(8, None, "RUNNING", phase=CONFIRM), record(8, None, "WAITING")]
    # 8 has 1 + 2 pending; plausible (within 0.01 + 2 sigma of 0.96): 8, 16, 32; 32 is fastest
    assert next_confirm(plan, records) == CellKey(32, "linear")
    records += [record(32, None, "RUNNING", phase=CONFIRM)]
    assert next_confirm(plan, records) == CellKey(32, "linear")  # 1 + 1 pending
    records[-1] = record(32, 0.955, phase=CONFIRM)
    records.append(record(32, 0.956, phase=CONFIRM))
    records.append(record(16, None, "FAIL", phase=CONFIRM))  # a failed attempt is no run
    assert next_confirm(plan, records) is None  # nothing to compare 32 with until 8 is confirmed
    records[7:9] = [record(8, 0.96, phase=CONFIRM), record(8, 0.961, phase=CONFIRM)]
    # 32 is 0.005 behind with a small se: it qualifies; before the walk stops there, it and 8
    # take turns up to 6 runs each (VERIFY_QUALIFIED), the cell first on a tie
    assert next_confirm(plan, records) == CellKey(32, "linear")
    records.append(record(32, 0.955, phase=CONFIRM))
    assert next_confirm(plan, records) == CellKey(8, "linear")
    records += [record(8, 0.96, phase=CONFIRM)] + [record(32, 0.955), record(8, 0.96)] * 2
    # it still qualifies on 6 runs each: settled, so batch 16 (slower) is never confirmed
    assert next_confirm(plan, records) is None


def test_a_cell_that_qualifies_on_its_first_runs_is_named_only_if_it_still_does_on_more(
    monkeypatch,
):
    plan = ConfirmPlan(total=10, confirm_runs=3, tolerance=0.01)
    best = [record(8, v) for v in (0.96, 0.961, 0.959)]
    lucky = [record(32, v) for v in (0.956, 0.957, 0.955)]  # 0.004 behind, se 0.0008
    records = best + lucky + [record(16, 0.953)]
    assert next_confirm(plan, records) == CellKey(32, "linear")  # qualifies: verify it
    monkeypatch.setattr(confirm, "VERIFY_QUALIFIED", False)
    assert next_confirm(plan, records) is None  # as before: the walk stopped at 3 runs
    monkeypatch.setattr(confirm, "VERIFY_QUALIFIED", True)
    # its next runs are worse: 32 ends 0.019 behind on 6 runs (d - se = 0.012 > 0.01), ruled
    # out, so the walk goes on to the slower plausible cell, 16
    records += [record(32, 0.925), record(8, 0.96), record(32, 0.927), record(8, 0.96)]
    records += [record(32, 0.926), record(8, 0.96)]
    assert next_confirm(plan, records) == CellKey(16, "linear")


def test_an_undecided_fast_cell_and_the_best_take_turns_up_to_the_cap():
    plan = ConfirmPlan(total=10, confirm_runs=3, tolerance=0.01)
    best = [record(8, v) for v in (0.96, 0.97, 0.95)]
    records = best + [record(32, v) for v in (0.955, 0.945, 0.95)] + [record(16, 0.962)]
    # d(32) = 0.01, se = sqrt(0.01^2 / 3 + 0.005^2 / 3) = 0.0065: could go either way
    assert next_confirm(plan, records) == CellKey(16, "linear")  # 16 has the best mean
    records += [record(16, v) for v in (0.94, 0.948)]  # 16 falls to 0.95, confirmed
    assert next_confirm(plan, records) == CellKey(32, "linear")  # 3 runs each: the cell first
    records.append(record(32, None, "RUNNING", phase=CONFIRM))
    assert next_confirm(plan, records) == CellKey(8, "linear")  # then the best
    records += [record(8, None, "WAITING")] + [record(32, 0.95), record(8, 0.96)] * 2
    # 6 runs each (the cap, 2 x 3) with 32 still undecided (d 0.01, se 0.0035): pass it to
    # the next slower plausible cell, 16 (d 0.01, se 0.007), which has fewer runs than 8
    assert next_confirm(plan, records) == CellKey(16, "linear")
    records += [record(16, 0.975)] * 3  # 16 now has the best mean, 32 its cap: nothing open
    assert next_confirm(plan, records) is None


def test_the_speed_walk_takes_larger_batches_first_and_skips_cells_no_faster_than_the_best():
    plan = ConfirmPlan(total=10, confirm_runs=3, tolerance=0.01)

    def timed(batch: int, value: float, seconds: float) -> TrialRecord:
        return TrialRecord(
            batch_size=batch, scaling_rule="linear", val_metric=value, train_time_s=seconds,
            state="COMPLETE",
        )  # fmt: skip

    best = [timed(16, v, 8.0) for v in (0.96, 0.962, 0.958)]
    records = best + [timed(512, 0.955, 0.30), timed(256, 0.957, 0.25), timed(64, 0.959, 9.0)]
    records.append(timed(1024, 0.5, 0.2))  # the 7th search trial; far behind, not plausible
    # 256's one trial timed faster than 512's (beyond the knee, noise): 512 still comes first
    assert next_confirm(plan, records) == CellKey(512, "linear")
    records += [timed(512, 0.90, 0.3), timed(512, 0.91, 0.3)]  # 512 ruled out
    assert next_confirm(plan, records) == CellKey(256, "linear")
    records += [timed(256, 0.90, 0.3), timed(256, 0.91, 0.3)]  # 256 ruled out
    # 64 is plausible but its trial ran slower than the best's: confirming it cannot pay
    assert next_confirm(plan, records) is None


def test_a_larger_batch_whose_every_trial_was_pruned_gets_one_unpruned_run():
    plan = ConfirmPlan(total=10, confirm_runs=3, tolerance=0.01)
    best = [record(64, v) for v in (0.94, 0.941, 0.939)]
    pruned = [record(256, 0.6, "PRUNED"), record(128, 0.6, "PRUNED")]
    collapsed = [record(512, 0.1, "PRUNED", diverged=True)]  # diverged: bad, not unknown
    smaller = [record(8, 0.5, "PRUNED")]  # slower than the best: cannot pay
    records = best + pruned + collapsed + smaller + [record(2048, 0.3)]
    assert next_confirm(plan, records) == CellKey(256, "linear")  # largest batch first
    records.append(record(256, None, "WAITING", phase=CONFIRM))
    assert next_confirm(plan, records) is None  # queued: wait for where it ends
    records[-1] = record(256, 0.70, phase=CONFIRM)  # it ends far behind: not plausible
    assert next_confirm(plan, records) == CellKey(128, "linear")
    records.append(record(128, 0.935, phase=CONFIRM))  # it ends plausible: confirm it
    assert next_confirm(plan, records) == CellKey(128, "linear")
    records += [record(128, 0.94, phase=CONFIRM)] * 2  # qualifies: verified, then settled
    assert next_confirm(plan, records) == CellKey(128, "linear")
    records += [record(128, 0.94, phase=CONFIRM), record(64, 0.94, phase=CONFIRM)] * 3
    assert next_confirm(plan, records) is None


def test_lr_search_confirms_at_the_bucket_centre():
    rules = ("linear", "none")
    plan = ConfirmPlan(10, 3, 0.01, scaling_rules=rules, lr_search_width=2.0)
    key = CellKey(64, "none", 1.5)
    assert plan.params(key) == {"batch_size": 64, "scaling_rule": "none", "lr_multiplier": 2.0}
    assert plan.user_attrs(CellKey(64, "none", -0.5))["lr_multiplier"] == pytest.approx(2**-0.5)
    assert ConfirmPlan(10, 3, 0.01).params(key) == {"batch_size": 64}


def fake_objective(noise: float = 0.002, interrupt_at: set[int] | None = None):
    """An objective like the real one (same parameters and record), instant."""

    def objective(trial: optuna.Trial) -> float:
        batch = trial.suggest_categorical("batch_size", BATCHES)
        if interrupt_at and trial.number in interrupt_at:
            interrupt_at.discard(trial.number)
            raise KeyboardInterrupt
        rng = random.Random(trial.number)
        value = ACCURACY[batch] + rng.gauss(0.0, noise)
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
    study.set_user_attr("space", {"batch_sizes": BATCHES, "scaling_rules": ["linear"]})
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
    assert len(finished) == total
    assert all(t.user_attrs.get("phase") in ("search", CONFIRM) for t in finished)
    search, confirm = by_phase(study)
    plan = ConfirmPlan.of_study(study, total)
    assert plan is not None and len(search) >= plan.search_budget
    assert confirm, "no confirmation trial ran"
    runs = Counter(r.batch_size for r in search + confirm if r.state == "COMPLETE")
    confirmed = Counter(r.batch_size for r in confirm)
    for batch, n in confirmed.items():
        assert budget_ended_it or runs[batch] >= confirm_runs, (batch, runs)
        # a cell is confirmed only while its runs (queued and running included) are under
        # the cap, and it had a search run first: a run enqueued twice would pass the cap
        cap = MAX_RUNS_FACTOR * confirm_runs
        assert n <= cap - 1, f"batch {batch} confirmed {n} times"
    assert study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING)) == []


def test_a_study_searches_then_confirms_within_its_exact_budget(sqlite_url):
    study = make_study(sqlite_url)
    assert run_trials(study, fake_objective(), total=20, lock=FileLock(lock_path_of(sqlite_url)))
    assert_confirmed(study, 20)
    search, confirm = by_phase(study)
    first_confirm = min(r.number for r in confirm)
    assert all(r.number < first_confirm for r in search[:13])  # the search's share came first
    answer = recommend(study)
    assert answer["most_accurate"] is not None and answer["most_accurate"]["runs"] >= 3
    assert answer["budget"]["confirm_trials"] == len(confirm)


def lock_path_of(url: str) -> Path:
    return lock_path(url[len("sqlite:///") :])


def test_workers_claiming_at_once_never_enqueue_a_run_twice(sqlite_url):
    # 4 runs a cell: the 16 random search trials (over 10 batch sizes) almost never give the
    # best cell and the faster ones their 4 runs already, so confirmation has work to race for
    make_study(sqlite_url, confirm_runs=4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:  # each worker its own connection, as separate processes have
            storage = open_storage(sqlite_url, heartbeat_interval=1, grace_period=5)
            study = optuna.load_study(study_name=None, storage=storage)
            lock = FileLock(lock_path_of(sqlite_url))
            run_trials(study, fake_objective(), total=24, lock=lock, poll_s=0.05)
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
    assert_confirmed(study, 24, confirm_runs=4, budget_ended_it=True)


def test_resume_after_an_interrupted_confirmation_does_not_enqueue_again(sqlite_url):
    study = make_study(sqlite_url)
    lock = FileLock(lock_path_of(sqlite_url))
    with pytest.raises(KeyboardInterrupt):  # trial 14: the second confirmation run
        run_trials(study, fake_objective(interrupt_at={14}), total=20, lock=lock)
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.number for t in failed] == [14] and failed[0].user_attrs["phase"] == CONFIRM
    assert len(waiting) == 1 and waiting[0].user_attrs["phase"] == CONFIRM  # queued again
    cell = waiting[0].user_attrs["batch_size"]
    # a claim takes the queued retry and enqueues nothing of its own
    claim = claim_trial(study, 20, NoLock(), confirm=ConfirmPlan.of_study(study, 20))
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
    study = run_digits(url, 8, tmp_path / "log.txt")  # search 6, then confirmation
    assert_confirmed(study, 8, confirm_runs=2)
    search, confirm = by_phase(study)
    assert all(r.state == "COMPLETE" for r in confirm)  # never pruned
    seeds = [t.user_attrs["seed"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(set(seeds)) == len(seeds)  # fresh seeds: runs, not copies
    answer = recommend(study)
    assert answer["most_accurate"] is not None and answer["most_accurate"]["runs"] >= 2
    before = {t.number: t.user_attrs.get("phase") for t in study.get_trials()}
    again = run_digits(url, 8, tmp_path / "log.txt")  # a finished study: nothing to do
    assert {t.number: t.user_attrs.get("phase") for t in again.get_trials()} == before
    more = run_digits(url, 11, tmp_path / "log.txt")  # resumed with a larger budget
    assert_confirmed(more, 11, confirm_runs=2)
