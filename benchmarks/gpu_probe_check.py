#!/usr/bin/env python
"""GPU check: the probe's cap against the real out-of-memory boundary on a CUDA device.

The process is limited to ``--limit-gib`` of the GPU with
``torch.cuda.set_per_process_memory_fraction`` (so the check is quick and does not depend on
what else runs on the card) and the probe gets exactly that much, less what the process
already holds, as its budget (margin 0). Then, independently of the probe, a plain training
loop (``--steps-per-try`` steps of forward, backward, optimizer step and one evaluation batch,
the task's splits held on the device as training holds them, a fresh model per try) runs at
the probe's cap, then 2x, 4x, ... until a real ``torch.cuda.OutOfMemoryError``, and bisects
between the last power of two that ran and the first that failed. It prints the probe's table,
both answers and the real loop's peak reserved memory next to the probe's measurement.

Exit status: 0 when the cap trained for real (``exact`` if 2x the cap ran out of memory or
is past the search limit, ``conservative`` if a larger power of two also trained), 1 when the
cap itself ran out of memory (unsafe), 2 when CUDA is not available. About a minute on one
H100 with the defaults.

Example:
    python benchmarks/gpu_probe_check.py
    python benchmarks/gpu_probe_check.py --limit-gib 2 --hidden 8192 --optimizer sgd
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

GiB = 1024**3


def _hidden(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> int:
    from study.config import OPTIMIZERS, PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--limit-gib", type=float, default=4.0, help="GPU memory for this check")
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--hidden", type=_hidden, default=(4096, 4096), help="MLP widths")
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--samples", type=int, default=131072)
    parser.add_argument("--steps-per-try", type=int, default=3)
    parser.add_argument("--bisect", type=int, default=6, help="bisection tries past the cap")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_probe_check: CUDA is not available here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); run it on a machine with a CUDA GPU. Nothing "
            "was checked.",
            file=sys.stderr,
        )
        return 2

    from objectives.data import place
    from objectives.probe import probe_batch_size
    from objectives.probe_memory import ProbeError
    from objectives.tasks import load_task
    from objectives.train import TrainSettings, make_step
    from study.units import format_bytes

    device = torch.device(args.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    torch.cuda.init()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    limit = int(min(args.limit_gib * GiB, 0.9 * free))
    torch.cuda.set_per_process_memory_fraction(limit / total, device)
    print(
        f"GPU check on {torch.cuda.get_device_name(device)} ({device}): this process is limited "
        f"to {format_bytes(limit)} of {format_bytes(total)} "
        "(torch.cuda.set_per_process_memory_fraction)"
    )

    task = load_task(
        "synthetic",
        model="mlp",
        hidden=args.hidden,
        synthetic_samples=args.samples,
        synthetic_features=args.features,
        synthetic_classes=10,
    )
    gc.collect()
    torch.cuda.empty_cache()
    base_reserved = torch.cuda.memory_reserved(device)
    budget = limit - base_reserved
    started = time.perf_counter()
    try:
        result = probe_batch_size(
            task,
            optimizer=args.optimizer,
            device=device,
            precision=args.precision,
            memory_budget=budget,
            memory_margin=0.0,
        )
    except ProbeError as exc:
        print(f"gpu_probe_check: {exc} (raise --limit-gib)", file=sys.stderr)
        return 1
    probe_s = time.perf_counter() - started
    print(result.format_table())
    print(f"probe: {probe_s:.1f} s, {result.steps_run} search steps\n")

    # The real loop: the trials' own step (objectives.train.make_step: fused optimizer,
    # autocast, gradient scaler), written out here rather than taken from the probe.
    gc.collect()
    torch.cuda.empty_cache()
    # All three splits stay on the device, as training holds them (the probe counted them).
    train, val, test = (place(d, device) for d in (task.train, task.val, task.test))
    generator = torch.Generator(device=device).manual_seed(0)
    settings = TrainSettings(
        epochs=1,
        batch_size=1,
        micro_batch_size=1,
        lr=1e-3,
        optimizer=args.optimizer,
        device=str(device),
        precision=args.precision,
    )

    def try_batch(batch_size: int) -> int | None:
        """Peak reserved bytes of a short real run at ``batch_size``; None if out of memory."""
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        model = task.build_model().to(device)
        step = make_step(model, settings)
        failed = False
        try:
            for _ in range(args.steps_per_try):
                index = torch.randint(
                    len(train.y), (batch_size,), device=device, generator=generator
                )
                x, y = train.x[index], train.y[index]
                step(x, y)
                model.eval()
                with torch.no_grad(), step.autocast():
                    (model(x).argmax(dim=1) == y).sum().item()
                model.train()
                del x, y, index
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            failed = True
        peak = torch.cuda.max_memory_reserved(device) - base_reserved
        return None if failed else peak

    def runs(batch_size: int) -> int | None:
        peak = try_batch(batch_size)
        gc.collect()
        torch.cuda.empty_cache()
        word = "ran" if peak is not None else "OUT OF MEMORY"
        shown = format_bytes(peak) if peak is not None else "-"
        print(f"  real loop at {batch_size:>7}: {word:<13} peak reserved {shown}")
        return peak

    limit_batch = result.search_limit
    cap = result.max_batch_size
    print(f"Real training loop ({args.steps_per_try} steps per try, fresh model each try):")
    started = time.perf_counter()
    cap_peak = runs(cap)
    if cap_peak is None:
        size = cap // 2
        while size >= 1 and runs(size) is None:
            size //= 2
        print(
            f"\nUNSAFE: the probe's cap {cap} ran out of memory in a real loop; the largest "
            f"power of two that trained is {size if size >= 1 else 'none'}."
        )
        return 1
    last_ok, first_fail = cap, None
    while last_ok * 2 <= limit_batch:
        if runs(last_ok * 2) is None:
            first_fail = last_ok * 2
            break
        last_ok *= 2
    boundary_lo, boundary_hi = last_ok, first_fail
    if first_fail is not None:
        for _ in range(args.bisect):
            if boundary_hi - boundary_lo <= 1:
                break
            mid = (boundary_lo + boundary_hi) // 2
            if runs(mid) is None:
                boundary_hi = mid
            else:
                boundary_lo = mid
    real_s = time.perf_counter() - started

    probe_at_cap = next(r.measured_bytes for r in result.rows if r.batch_size == cap)
    print(
        f"\nBudget given to the probe: {format_bytes(budget)} (the {format_bytes(limit)} limit "
        f"less {format_bytes(base_reserved)} already reserved)"
    )
    print(f"Probe cap:                       {cap} (search limit {limit_batch})")
    print(f"Largest power of two that ran:   {last_ok}")
    if first_fail is None:
        print(f"First power of two out of memory: none up to the search limit {limit_batch}")
    else:
        print(f"First power of two out of memory: {first_fail}")
        print(
            f"Real boundary (bisected):        runs at {boundary_lo}, out of memory at "
            f"{boundary_hi}; the probe predicted "
            f"{format_bytes(result.predicted_bytes(boundary_lo))} at {boundary_lo} "
            f"against the budget {format_bytes(budget)}"
        )
    print(
        f"Memory at the cap:               probe measured {format_bytes(probe_at_cap)}, "
        f"predicted {format_bytes(result.predicted_bytes(cap))}; real loop peak reserved "
        f"{format_bytes(cap_peak)}"
    )
    print(f"Time: probe {probe_s:.1f} s, real boundary search {real_s:.1f} s")
    if last_ok == cap:
        print("\nEXACT: the probe's cap is the largest power of two that trains in the limit.")
    else:
        print(
            f"\nCONSERVATIVE: the cap {cap} trains, but so does {last_ok} "
            f"({last_ok // cap}x larger)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
