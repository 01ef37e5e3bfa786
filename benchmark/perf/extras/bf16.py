"""``perf --bf16``: does bfloat16 autocast speed a detr training step up on this device, and how far does it move
training? Each detr variant's step under ``torch.autocast(bfloat16)`` (matmuls and convolutions in bf16, the
weights, the loss reductions and the optimiser in fp32) against fp32 eager on the same batches: images/s, and after
the timed steps the drift of its parameters from the same model trained in fp32 (same initialisation, batches and
random draws), relative to how far fp32 training moved them: 0 is no effect, 1 an effect as large as the training
itself. A measurement only: no suite trains under autocast."""
from __future__ import annotations

import time

from benchmark.perf.extras.base import PerfExtra, register


def bf16_throughput(report, names: list[str], make_step, batches: list, device, steps: int) -> None:
    import torch

    from benchmark.perf.common import sync_device

    batch_size = len(batches[0][1])
    for name in names:
        models = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            step, model = make_step(name)
            initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                for images, targets in batches[:3]:  # warm-up, as the train table's
                    step(images, targets)
                sync_device(device)
                start = time.perf_counter()
                for images, targets in batches[3:3 + steps]:
                    step(images, targets)
                sync_device(device)
            models[precision] = (torch.cat([p.detach().flatten() for p in model.parameters()]),
                                 steps * batch_size / (time.perf_counter() - start))
        (fp32, fp32_rate), (bf16, bf16_rate) = models["fp32"], models["bf16"]
        drift = float((bf16 - fp32).norm() / (fp32 - initial).norm())
        report.add("bf16", f"{name} bf16 autocast images/s", bf16_rate, "img/s",
                   f"{bf16_rate / fp32_rate:.2f}× fp32 in the same process, batch {batch_size}, {steps} steps")
        report.add("bf16", f"{name} bf16 parameter drift", drift, "fraction",
                   f"‖θ_bf16 − θ_fp32‖ / ‖θ_fp32 − θ_0‖ after {steps + 3} steps from the same start")


def run(report, options, bench) -> None:
    from benchmark.registry import REGISTRY

    bf16_throughput(report, REGISTRY.method_names("detr"), bench.make_step, bench.batches, bench.device, bench.steps)


register(PerfExtra(
    "bf16", help="also time every detr variant's training step under bfloat16 autocast against fp32, and how far it "
                 "moves the trained parameters (off by default)", stage="train", run=run))
