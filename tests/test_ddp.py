"""``cvpdl.ddp`` with 2 CPU processes (gloo): one optimisation step under DDP has the single-process loss and
gradient of the global batch — contrastive losses through the gradient-carrying all-gather (CLIP's, RegionCLIP's),
per-sample mean losses with unequal shards through the shard weight. The whole suites under torchrun are tested in
``test_reliability`` (detr) and ``test_ddp_suites`` (kd, ovd)."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cvpdl import ddp

WORLD = 2


def _spawn(worker, tmp_path: Path, *args) -> None:
    torch.multiprocessing.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), *args), nprocs=WORLD, join=True)


def _join(rank: int, init: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)


def _leave() -> None:
    """Called in ``finally``. Both ranks pass a barrier; a rank that passed its checks then exits at once, without
    gloo's teardown: a gloo thread that sees its peer gone first aborts the process ("terminate called without an
    active exception", seen under load even after the barrier). A failing rank tears down and re-raises."""
    dist.barrier()
    if sys.exc_info()[0] is None:
        os._exit(0)
    dist.destroy_process_group()


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in module.parameters() if p.requires_grad]
    module.zero_grad(set_to_none=True)
    return grads


class _TinyClip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.text = torch.nn.Linear(6, 4), torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def embed(self, x, t):
        return F.normalize(self.image(x), dim=-1), F.normalize(self.text(t), dim=-1), self.logit_scale.exp()


def _contrastive_worker(rank: int, init: str, _tmp: str) -> None:
    from cvpdl.ovd.losses import image_text_contrastive, same_caption_mask

    torch.manual_seed(0)
    model = _TinyClip()
    x, t = torch.randn(7, 6), torch.randn(7, 5)  # 7: the shards are unequal (4 and 3)
    captions = ["a", "b", "a", "c", "d", "b", "e"]
    reference = image_text_contrastive(*model.embed(x, t), same_caption_mask(captions))  # one process
    reference.backward()
    expected = _grads(model)
    _join(rank, init)
    try:
        forward = ddp.wrap(model, model.embed)
        batch = list(range(7))
        image, text, scale = forward(x[ddp.shard(batch)], t[ddp.shard(batch)])
        loss = image_text_contrastive(ddp.all_gather_with_grad(image), ddp.all_gather_with_grad(text), scale,
                                      same_caption_mask([captions[i] for i in ddp.gathered(batch)]))
        loss.backward()
        assert torch.allclose(loss, reference, atol=1e-6)
        for got, want in zip(_grads(model), expected):  # logit_scale included
            assert torch.allclose(got, want, atol=1e-6), (got, want)
    finally:
        _leave()


def _mean_loss_worker(rank: int, init: str, _tmp: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(7, 6), torch.randint(3, (7,))
    F.cross_entropy(model(x), y).backward()
    expected = _grads(model)
    _join(rank, init)
    try:
        trained, idx = ddp.wrap(model), ddp.shard(torch.arange(7))
        loss = F.cross_entropy(trained(x[idx]), y[idx])
        (loss * ddp.shard_weight(len(idx), 7)).backward()
        for got, want in zip(_grads(model), expected):
            assert torch.allclose(got, want, atol=1e-6), (got, want)
        assert torch.allclose(ddp.global_mean(loss.detach(), len(idx), 7), F.cross_entropy(model(x), y), atol=1e-6)
    finally:
        _leave()


def _regionclip_worker(rank: int, init: str, tmp: str) -> None:
    from cvpdl.data.captions import DIGIT_NAMES, concept_pool, prompt
    from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
    from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip
    from cvpdl.ovd.region_classifier import OvdContext
    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip_cfg = TinyClipConfig()
    teacher = ClipEncoder(build_tiny_clip(clip_cfg).eval(), clip_cfg.context_length)
    split = load_digits_split(DigitsWorldConfig(), "train", 8, 0, Path(tmp) / f"cache{rank}")
    ctx = OvdContext(teacher, split, None, list(DIGIT_NAMES))
    method = RegionClip(RegionClipConfig(keep_threshold=0.3))
    method.init_student(ctx)
    images = np.stack([split.image(i) for i in range(8)])
    regions = [split.target(i)[0] for i in range(8)]  # 1-4 boxes per image: the ranks' region counts differ
    captions = list(split.captions)
    concepts = concept_pool(captions, DIGIT_NAMES)
    with torch.no_grad():
        concept_emb = teacher.encode_text([prompt(c) for c in concepts])
        caption_emb = teacher.encode_text(captions)
    reference = method.losses(ctx, images, captions, regions, concepts, concept_emb, caption_emb)
    sum(reference.values()).backward()
    model = method.student.model
    expected = _grads(model)
    _join(rank, init)
    try:
        forward = ddp.wrap(model, method.student_embeddings)
        order = ddp.gathered(list(range(8)))  # as RegionClip.fit passes the global batch
        losses = method.losses(ctx, images[order], [captions[i] for i in order], [regions[i] for i in order],
                               concepts, concept_emb, caption_emb[order], forward)
        sum(losses.values()).backward()
        for name, value in reference.items():
            assert torch.allclose(losses[name], value, atol=1e-5), (name, losses[name], value)
        for got, want in zip(_grads(model), expected):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    finally:
        _leave()


@pytest.mark.parametrize("worker", [_contrastive_worker, _mean_loss_worker], ids=["clip_loss", "unequal_shards"])
def test_one_ddp_step_equals_the_single_process_step(tmp_path, worker):
    _spawn(worker, tmp_path)


def test_regionclip_losses_and_gradients_under_ddp_equal_one_process(tmp_path):
    _spawn(_regionclip_worker, tmp_path)


def test_helpers_are_the_identity_without_a_process_group():
    batch = [3, 1, 2]
    assert ddp.rank_world() == (0, 1) and ddp.shard(batch) is batch and ddp.gathered(batch) is batch
    value = torch.tensor([1.0, 2.0])
    assert ddp.all_gather_with_grad(value) is value and ddp.all_gather_rows(value) is value
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap(model) is model and ddp.wrap(model, model.forward) == model.forward
    order = ddp.global_order(5, torch.Generator().manual_seed(0))
    assert torch.equal(order, torch.randperm(5, generator=torch.Generator().manual_seed(0)))
