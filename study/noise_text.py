"""The noise-scale command's result in words: what was measured, the per-epoch table of
B_simple, the estimate chosen and the batch size it suggests.

Reads the plain result of ``objectives.noise.noise_scale_over_training`` (the command's
``--json``), so it needs no torch.
"""

from __future__ import annotations


def noise_scale_text(result: dict, task: str, unit: str = "samples") -> str:
    """The lines ``batchsize-study noise-scale`` prints for ``result`` of task ``task``
    (whose throughput counts ``unit``).

    Example:
        >>> row = {"epoch": 1, "b_simple": 70.0, "b_simple_se": 7.0, "relative_se": 0.1,
        ...        "repeats": 4, "stop": "precise", "trace_sigma": 3.0, "grad_norm_sq": 0.04}
        >>> result = {"measured_with": {"train_size": 600, "b_small": 8, "b_big": 128,
        ...           "target_relative_se": 0.1, "max_seconds": 30, "train_batch_size": 32,
        ...           "lr": 0.001, "optimizer": "adam"}, "per_epoch": [row], "b_simple": 70.0,
        ...           "b_simple_se": 7.0, "relative_se": 0.1, "epoch": 1, "stop": "precise",
        ...           "chosen_because": "the last epoch's", "recommended_range": [35, 140],
        ...           "recommended_batch_size": 64, "trusted": True}
        >>> print(noise_scale_text(result, "digits").splitlines()[-1])  # doctest: +ELLIPSIS
        recommended batch size: 64 (range 35-140: below B_simple doubling the batch ...
    """
    m = result["measured_with"]
    lines = [
        f"gradient noise scale of {task} ({m['train_size']} training samples), from "
        f"gradient norms at batches {m['b_small']} and {m['b_big']}; repeats added until the "
        f"error is at most {m['target_relative_se']:.0%} or {m['max_seconds']:g} s (shared) "
        f"run out; training between estimates: batch {m['train_batch_size']}, lr {m['lr']}, "
        f"{m['optimizer']}"
    ]
    if unit != "samples":  # batch sizes count items; the task's throughput counts more
        lines.append(
            f"B_simple counts samples, the items a batch size counts (one sample of "
            f"{task} holds several {unit}; its throughput is in {unit}/s)"
        )
    lines.append(
        f"{'epoch':>5} {'B_simple (samples)':>19} {'+/- s.e.':>9} {'error':>6} {'repeats':>8} "
        f"{'stopped by':>13} {'tr(Sigma)':>11} {'|G|^2':>11}"
    )
    for e in result["per_epoch"]:
        rel = e["relative_se"]
        lines.append(
            f"{e['epoch']:>5} {e['b_simple']:>19.1f} {e['b_simple_se']:>9.1f} "
            f"{f'{rel:.0%}' if rel is not None else 'inf':>6} {e['repeats']:>8} "
            f"{_stop_words(e['stop']):>13} {e['trace_sigma']:>11.4g} "
            f"{e['grad_norm_sq']:>11.4g}"
        )
    rel = result["relative_se"]
    error = f"{rel:.0%}" if rel is not None else "unbounded"
    lines.append(
        f"B_simple = {result['b_simple']:.0f} +/- {result['b_simple_se']:.0f} (error {error}, "
        f"epoch {result['epoch']}, stopped by {_stop_words(result['stop'])}): "
        f"{result['chosen_because']}"
    )
    low, high = result["recommended_range"]
    verdict = "" if result["trusted"] else " (NOT TRUSTWORTHY: see above)"
    lines.append(
        f"recommended batch size: {result['recommended_batch_size']}{verdict} (range "
        f"{low}-{high}: below B_simple doubling the batch nearly halves the steps; above it, "
        "it mostly wastes compute)"
    )
    return "\n".join(lines)


def _stop_words(stop: str) -> str:
    """How an estimate's repeats ended, in the table's words."""
    return {"precise": "precision", "time limit": "time limit"}.get(stop, stop)
