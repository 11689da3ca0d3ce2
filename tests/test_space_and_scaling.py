"""The batch-size space and the learning-rate rules."""

from __future__ import annotations

import math

import pytest

from study.scaling import resolve_rule, scaled_lr
from study.space import BatchSpace, SpaceError, build_space


def test_space_is_powers_of_two_between_min_and_the_smallest_cap():
    space = build_space(
        8, memory_cap=1000, max_accumulation=1, train_size=300, scaling="search", cap_source="probe"
    )
    assert space.batch_sizes == [8, 16, 32, 64, 128, 256]  # 256 = largest 2^k <= 300
    assert space.memory_cap == 256 and space.scaling_rules == ["linear", "sqrt", "none"]
    assert build_space(8, 64, 1, 10_000, "sqrt", "flag").batch_sizes == [8, 16, 32, 64]


def test_accumulation_extends_above_the_memory_cap_with_micro_batches_of_the_cap():
    space = build_space(
        16,
        memory_cap=64,
        max_accumulation=4,
        train_size=100_000,
        scaling="linear",
        cap_source="--max-batch-size",
    )
    assert space.batch_sizes == [16, 32, 64, 128, 256]
    assert [space.split(b) for b in space.batch_sizes] == [
        (16, 1),
        (32, 1),
        (64, 1),
        (64, 2),
        (64, 4),
    ]
    assert space.scaling_rules == ["linear"]
    # never beyond the training set, even with accumulation
    assert build_space(16, 64, 64, 300, "none", "x").batch_sizes[-1] == 256


def test_space_round_trips_through_the_stored_dict():
    space = build_space(8, 128, 2, 5000, "search", "probe (cpu)")
    assert BatchSpace.from_dict(space.to_dict()) == space


def test_min_above_cap_names_the_bound():
    with pytest.raises(SpaceError, match="--min-batch-size 64 is above the batch cap 32"):
        build_space(64, 32, 1, 1000, "none", "probe")


@pytest.mark.parametrize("rule, expected", [("linear", 4e-3), ("sqrt", 2e-3), ("none", 1e-3)])
def test_each_rule_scales_the_base_lr_with_the_batch_ratio(rule: str, expected: float):
    assert math.isclose(scaled_lr(rule, 1e-3, 32, 128), expected)
    assert math.isclose(scaled_lr(rule, 1e-3, 32, 32), 1e-3)


def test_auto_is_linear_for_sgd_and_sqrt_for_adaptive_optimisers():
    assert resolve_rule("auto", "sgd") == "linear"
    assert resolve_rule("auto", "adam") == resolve_rule("auto", "adamw") == "sqrt"
    assert resolve_rule("search", "sgd") == "search"
