"""``perf --population``: does training P seeds of a method as one batched model beat one member at a time? (detr
below; kd and ovd through the suites' own population paths, ``kd_population_throughput`` and
``ovd_population_throughput``)

PyTorch's model-ensembling recipe, on the ``detr`` suite's own model and criterion: the members' parameters stacked
(``torch.func.stack_module_state``), one ``vmap``-ed forward over them (each member its own initialisation; one batch
shared by all, see below), the set criterion with its Hungarian matching per (member, image) on the vmapped outputs, one
backward, AdamW on the stacked tensors (element-wise, so each member's update is its own). Rows: images/s of the
population (all members together) against one member trained alone in the same process (the train table), peak memory
per member on a GPU, and how far member 0's gradient is from the same member's alone (the numerical price of batching:
floating-point sums in another order).

Only plain ``detr``, one batch shared by every member, the model-level recipe: a step costs the same whichever images
a member sees, and this isolates the batched model's speed from the suite's data. The suites' own population paths
(every detr variant, each member its own batches and noise: ``cvpdl.detection.training.fit_population``) are timed
end to end by ``scripts/device_check.py --steps population`` (the detr full profile at 5 seeds) and by ``run
--population``'s own timings.csv. The section measures; nothing here trains a suite."""
from __future__ import annotations

import copy
import time

from benchmark.perf.extras.base import PerfExtra, register

SIZES = {"cpu": (1, 4, 8), "cuda": (1, 8, 32)}  # members per population timed on each device type
MODEL = "detr"


def members(cfg: dict, num_classes: int, count: int, device) -> list:
    """``count`` independently initialised (seeds 0, 1, …) model parts of ``MODEL``, as the suite builds them."""
    import torch

    from benchmark.registry import REGISTRY

    variant = REGISTRY.build(REGISTRY.method("detr", MODEL), cfg)
    parts = []
    for seed in range(count):
        torch.manual_seed(seed)
        parts.append(variant.parts(num_classes))
        parts[-1].model.to(device).train()
    return parts


def population_step(parts: list):
    """(one AdamW step of every member on its own (images, targets) batch, the stacked parameters)."""
    import torch
    from torch.func import functional_call, stack_module_state, vmap

    models, criterion = [p.model for p in parts], parts[0].criterion
    params, buffers = stack_module_state(models)
    params = {name: value.detach().requires_grad_() for name, value in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    tensors = ("logits", "boxes")  # the outputs vmap returns; the rest (no tensors) are the same for every member

    def forward(member_params, member_buffers, images):
        outputs = functional_call(base, (member_params, member_buffers), (images,))
        return {key: outputs[key] for key in tensors}

    batched = vmap(forward, in_dims=(0, 0, None), randomness="different")  # each member its own dropout masks
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4)

    constant = {}  # the outputs that are no tensors (e.g. the feature grid), the same for every member

    def step(images: torch.Tensor, targets: list[dict]) -> None:
        """One batch, the same for every member."""
        if not constant:
            with torch.no_grad():
                constant.update({k: v for k, v in models[0](images[:1]).items() if k not in tensors})
        outputs = batched(params, buffers, images)
        loss = 0.0
        for member in range(len(models)):
            own = {key: [layer[member] for layer in outputs[key]] for key in tensors}
            loss = loss + sum(criterion({**own, **constant}, targets)[0].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, params


def population_throughput(report, options, bench) -> None:
    import torch

    from benchmark.perf.common import detr_config, sync_device

    cfg, device = detr_config(), bench.device
    num_classes = bench.num_classes
    batch_size = len(bench.batches[0][1])
    steps = max(2, bench.steps // 2)
    alone = report.get("train", f"{MODEL} images/s")
    for size in SIZES["cuda" if device.type == "cuda" else "cpu"]:
        step, _ = population_step(members(cfg, num_classes, size, device))
        step(*bench.batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync_device(device)
        start = time.perf_counter()
        for images, targets in bench.batches[1:1 + steps]:
            step(images, targets)
        sync_device(device)
        rate = size * steps * batch_size / (time.perf_counter() - start)
        report.add("population", f"{MODEL} population of {size} images/s", rate, "img/s",
                   f"all members together; {rate / alone:.2f}× one member alone (train table), batch {batch_size} "
                   f"per member, {steps} steps")
        if device.type == "cuda":
            report.add("population", f"{MODEL} population of {size} peak memory per member",
                       torch.cuda.max_memory_allocated(device) / size / 2 ** 20, "MiB")
    report.add("population", f"{MODEL} member vs alone: largest |Δ gradient| / largest |gradient|",
               one_step_drift(cfg, num_classes, bench.batches, device), "fraction",
               "member 0 of a population of 2 vs the same member alone, same batch, no dropout")
    kd_population_throughput(report, device)  # the kd suite's own population path (``run --suite kd --population``)
    # and ovd's (RegionCLIP's ``fit_population``): 4 steps of batch 32 at the default 20 timed steps, 2 at fewer
    ovd_population_throughput(report, device, options.cache_dir, images=128 if bench.steps >= 20 else 64)


def timed_populations(report, device, suite: str, images: int, note: str, population_of) -> None:
    """``population_of(size)`` (a fresh population's training, a call over ``images`` images per member) timed at
    each size of this device type: images/s of all members together against P = 1, on a GPU also the peak memory
    per member."""
    import torch

    from benchmark.perf.common import sync_device

    rates = {}
    for size in SIZES[device.type if device.type in SIZES else "cpu"]:
        train = population_of(size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync_device(device)
        start = time.perf_counter()
        train()
        sync_device(device)
        rates[size] = size * images / (time.perf_counter() - start)
        report.add("population", f"{suite} population of {size} images/s", rates[size], "img/s",
                   f"{note}; {rates[size] / rates[min(rates)]:.2f}× P = 1")
        if device.type == "cuda":
            report.add("population", f"{suite} population of {size} peak memory per member",
                       torch.cuda.max_memory_allocated(device) / size / 2 ** 20, "MiB")


def kd_population_throughput(report, device, images: int = 512, batch_size: int = 64) -> None:
    """kd's ``logit_kd`` as ``run --population P`` trains it (the suite's student and teacher nets, random inputs of
    the suite's size): one epoch of P members together against P = 1 (``train`` alone), in this process."""
    import torch

    from benchmark.suites.kd import StudentNetConfig, TeacherNetConfig
    from cvpdl.distill.logit_kd import LogitKD, LogitKDConfig
    from cvpdl.distill.networks import ConvNet
    from cvpdl.distill.training import ClassificationData, TrainConfig, train_population
    from cvpdl.population import Member

    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, 16, 32, generator=g).to(device)
    y = torch.randint(0, 100, (images,), generator=g).to(device)
    data = ClassificationData(x, y, x[:64], y[:64], x[:64], y[:64], num_classes=100)

    def population_of(size: int):
        members, distillers = [], []
        for seed in range(size):
            torch.manual_seed(seed)
            members.append(Member(torch.Generator().manual_seed(seed)))
            distillers.append(LogitKD(ConvNet(StudentNetConfig(), 100), ConvNet(TeacherNetConfig(), 100).eval(),
                                      LogitKDConfig()).to(device))
        return lambda: train_population(distillers, data, [TrainConfig(epochs=1, batch_size=batch_size)] * size,
                                        members, evaluate=False)

    timed_populations(report, device, "kd", images,
                      f"logit_kd, all members together, one epoch of {images} images, batch {batch_size}",
                      population_of)


def ovd_population_throughput(report, device, cache_dir=None, images: int = 128) -> None:
    """ovd's ``regionclip`` as ``run --population P`` fits it (``RegionClip.fit_population``; P = 1 is ``fit``
    alone): one epoch over ``images`` digits-world canvases with random proposals (no localizer to train), the
    suite's default tiny CLIP (untrained: a step costs the same) and RegionCLIP config otherwise, the pseudo-label
    diagnostics included; against P = 1 in this process."""
    from pathlib import Path

    import torch

    from benchmark.paths import default_cache_dir
    from cvpdl.data.captions import DIGIT_NAMES
    from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
    from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip
    from cvpdl.ovd.region_classifier import OvdContext
    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig
    from cvpdl.population import Member

    torch.manual_seed(0)
    clip_cfg = TinyClipConfig()
    teacher = ClipEncoder(build_tiny_clip(clip_cfg).to(device).eval().requires_grad_(False), clip_cfg.context_length)
    split = load_digits_split(DigitsWorldConfig(), "train", images, 0, Path(cache_dir or default_cache_dir()))
    ctx = OvdContext(teacher, split, None, list(DIGIT_NAMES))
    cfg = RegionClipConfig(images=images, proposals="random")

    def population_of(size: int):
        methods = [RegionClip(cfg) for _ in range(size)]
        members = [Member(torch.Generator().manual_seed(seed)) for seed in range(size)]
        return lambda: RegionClip.fit_population(methods, ctx, members)

    timed_populations(report, device, "ovd", images,
                      f"regionclip, all members together, one epoch of {images} images, batch {cfg.batch_size}",
                      population_of)


def one_step_drift(cfg: dict, num_classes: int, batches: list, device) -> float:
    """Member 0's gradients in a population of 2 against the same member (seed 0, same batch) alone: the largest
    absolute difference over the largest absolute gradient. Without dropout (eval mode; the backbone's norm is
    frozen), so only the order of floating-point sums differs."""
    [alone] = members(cfg, num_classes, 1, device)
    alone.model.eval()
    images, targets = batches[0]
    sum(alone.criterion(alone.model(images), targets)[0].values()).backward()
    parts = members(cfg, num_classes, 2, device)
    for part in parts:
        part.model.eval()
    step, params = population_step(parts)
    step(images, targets)
    grads = {name: param.grad for name, param in alone.model.named_parameters() if param.grad is not None}
    largest = max(float(g.abs().max()) for g in grads.values())
    return max(float((params[name].grad[0] - g).abs().max()) for name, g in grads.items()) / largest


def population_goals(report) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) where this run timed populations, per suite against one member trained alone (detr: the
    train table; kd and ovd: their P = 1, trained alone): some population (P > 1) is faster by ``sizing.MARGIN``,
    so that ``--population auto`` picks it; on a CPU 8 members ≥ 1.8× one member's images/s, on a GPU 32 ≥ 15×."""
    from benchmark.sizing import MARGIN

    def rates_of(model: str) -> dict[int, float]:
        return {int(r["item"].split(" of ")[1].split()[0]): r["value"] for r in report.rows
                if r["section"] == "population" and r["item"].startswith(f"{model} population")
                and r["item"].endswith("images/s")}

    goals = []
    for model, one in ((MODEL, report.get("train", f"{MODEL} images/s")), ("kd", rates_of("kd").get(1)),
                       ("ovd", rates_of("ovd").get(1))):
        batched = {size: rate for size, rate in rates_of(model).items() if size > 1}
        if not batched or not one:
            continue
        best = max(batched, key=batched.get)
        goals.append((f"{model}: a population (P > 1) ≥ {MARGIN:g}× one member alone (then `auto` picks it)",
                      f"best P = {best}: {batched[best] / one:.2f}×", bool(batched[best] >= MARGIN * one)))
        for size, target, device in ((8, 1.8, "CPU"), (32, 15, "GPU")):
            if size in batched:
                goals.append((f"{model}: {size} members ≥ {target}× one member's images/s ({device})",
                              f"{batched[size] / one:.2f}×", bool(batched[size] >= target * one)))
    return goals


register(PerfExtra(
    "population", help="also time the detr model trained as a population (P seeds as one vmapped model) against "
                       "one member alone, and one step's drift (off by default)", stage="train",
    run=population_throughput))
