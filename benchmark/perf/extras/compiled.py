"""``perf --compile`` (minutes, so off by default): does ``torch.compile`` speed a training step up? The ``detr``
variants in ``VARIANTS`` under ``torch.compile`` (inductor): compile time from an empty inductor cache and images/s
against eager on the same batches."""
from __future__ import annotations

import math
import tempfile
import time

from benchmark.perf.extras.base import PerfExtra, register

# detr alone: compiling all three had not finished after 15 minutes on 2 cores (not profiled; likely inductor's
# C++ builds, and recompiles where DN-DETR's query count follows each batch's targets)
VARIANTS = ("detr",)


def compiled_throughput(report, names: list[str], make_step, batches: list, device,
                        steps: int) -> None:
    """Each model under ``torch.compile`` (inductor): seconds until its first 3 steps are done (compilation from an
    empty inductor cache, forward and backward), then images/s over ``steps`` steps on the same batches as eager."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    batch_size = len(batches[0][1])
    for name in names:
        torch.manual_seed(0)
        torch._dynamo.reset()  # each model compiles from scratch
        step, _ = make_step(name, compiled=True)
        with tempfile.TemporaryDirectory() as cache, temporary_cache_dir(cache):
            start = time.perf_counter()
            for images, targets in batches[:3]:
                step(images, targets)
            compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for images, targets in batches[3:3 + steps]:
            step(images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = steps * batch_size / (time.perf_counter() - start)
        eager = report.get("train", f"{name} images/s")
        report.add("compiled", f"{name} compile + first 3 steps", compile_seconds, "s",
                   "torch.compile, inductor, from an empty cache")
        report.add("compiled", f"{name} compiled images/s", rate, "img/s",
                   f"{rate / eager:.2f}× eager (train table), batch {batch_size}, {steps} steps")


def missed_goal_note(report, name: str) -> str:
    compiled = report.get("compiled", f"{name} compiled images/s")
    if not math.isfinite(compiled):
        return ("Compiled execution is not measured by this run (`perf --compile` measures it for "
                + ", ".join(f"`{v}`" for v in VARIANTS) + ").")
    eager = report.get("train", f"{name} images/s")
    return (f"Tried: `torch.compile` (compiled table): {compiled:.0f} img/s, {compiled / eager:.2f}× eager, after "
            f"{report.get('compiled', f'{name} compile + first 3 steps'):.0f} s of compilation.")


register(PerfExtra(
    "compile", help="also time detr under torch.compile: compile seconds and images/s vs eager (minutes; off by "
                    "default)", stage="train",
    run=lambda report, options, bench: compiled_throughput(report, list(VARIANTS), bench.make_step, bench.batches,
                                                           bench.device, bench.steps),
    missed_goal_note=missed_goal_note))
