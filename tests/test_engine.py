"""The one training loop (``cvpdl.engine``): the same numbers as a plain hand-written loop, and every trainer built on
it resumes to the uninterrupted result and stops on a diverging loss, the tiny CLIP, the localizer and backbone
pretraining included."""
from __future__ import annotations

import pytest
import torch

from cvpdl.checkpoint import Checkpoint
from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
from cvpdl.detection.backbone_pretrain import BackbonePretrainConfig, presence_labels, pretrain_backbone
from cvpdl.engine import Batch, TrainLoop
from cvpdl.errors import NonFiniteLossError
from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip
from cvpdl.ovd.localizer import LocalizerConfig, build_localizer, train_localizer
from cvpdl.ovd.tiny_clip_training import train_clip


def _regression(n: int = 10):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def test_loop_equals_a_plain_sgd_loop_golden_values():
    """Two epochs of batch 4 over 10 samples (2 full steps each), a step schedule and clipping: the loop's
    parameters and epoch means equal a plain loop's, and the first epoch's mean loss is a golden value."""
    x, y = _regression()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())

    def make(module):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 3, gamma=0.5)

    optimizer, schedule = make(model)
    loop = TrainLoop("linear", model, optimizer, torch.Generator().manual_seed(7), len(x), 4, 2,
                     step_scheduler=schedule, clip_parameters=list(model.parameters()), clip_norm=1.0,
                     weights={"loss_half": 0.5})

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        mse = torch.nn.functional.mse_loss(model(x[batch.mine]), y[batch.mine])
        return {"loss_mse": mse, "loss_half": mse}

    state = loop.run(step)

    optimizer, schedule = make(reference)
    generator, means = torch.Generator().manual_seed(7), []
    for _ in range(2):
        order, total = torch.randperm(10, generator=generator).tolist(), 0.0
        for k in range(2):
            idx = order[4 * k:4 * k + 4]
            mse = torch.nn.functional.mse_loss(reference(x[idx]), y[idx])
            optimizer.zero_grad()
            (mse + 0.5 * mse).backward()
            torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 1.0)
            optimizer.step()
            schedule.step()
            total += mse.item() / 2
        means.append(total)
    assert state["losses"]["loss_mse"] == pytest.approx(means, abs=0) == state["losses"]["loss_half"]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    assert means[0] == pytest.approx(0.800054, abs=1e-6)  # pinned: the data and seeds above


def test_a_nonfinite_loss_names_the_stage_epoch_and_step():
    x, y = _regression()
    model = torch.nn.Linear(3, 1)
    loop = TrainLoop("linear", model, torch.optim.SGD(model.parameters(), lr=0.1), torch.Generator(), len(x), 4, 3)
    calls = []

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        calls.append(batch.where)
        loss = torch.nn.functional.mse_loss(model(x[batch.mine]), y[batch.mine])
        return {"loss": loss * float("nan") if len(calls) == 3 else loss}

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at linear epoch 2, step 1"):
        loop.run(step)


class _Killed(Exception):
    pass


def _killed_in_second_epoch(stage, epoch, epochs, values):
    if epoch == 2:  # its report comes before its checkpoint: the checkpoint holds epoch 1
        raise _Killed


def _backbone(tmp_path, checkpoint=None, on_epoch=None, presence_scale=1.0):
    split = load_digits_split(DigitsWorldConfig(), "train", 24, 0, tmp_path / "data")
    presence = presence_labels([split.target(i)[1] for i in range(len(split))], 10) * presence_scale
    torch.manual_seed(0)
    body = pretrain_backbone(4, split.images, presence, BackbonePretrainConfig(epochs=2, batch_size=16),
                             torch.Generator().manual_seed(0), on_epoch or (lambda *a: None), checkpoint)
    return body.state_dict()


def _clip(tmp_path, checkpoint=None, on_epoch=None, lr=5e-4):
    split = load_digits_split(DigitsWorldConfig(), "train", 24, 0, tmp_path / "data")
    cfg = TinyClipConfig(epochs=2, batch_size=12, lr=lr, vision_width=16, text_width=32, text_layers=1)
    torch.manual_seed(0)
    encoder = ClipEncoder(build_tiny_clip(cfg), cfg.context_length)
    train_clip(encoder, split.images, split.captions, cfg, torch.Generator().manual_seed(0),
               on_epoch or (lambda *a: None), checkpoint)
    return encoder.model.state_dict()


def _localizer(tmp_path, checkpoint=None, on_epoch=None, lr=2e-3):
    split = load_digits_split(DigitsWorldConfig(), "train", 16, 0, tmp_path / "data")
    cfg = LocalizerConfig(width=8, epochs=2, batch_size=8, lr=lr)
    torch.manual_seed(0)
    model = build_localizer(cfg, 64)
    train_localizer(model, split, cfg, torch.Generator().manual_seed(0), split.base_classes,
                    on_epoch or (lambda *a: None), checkpoint)
    return model.state_dict()


@pytest.mark.parametrize("train", [_backbone, _clip, _localizer], ids=["backbone", "clip", "localizer"])
def test_killed_in_an_epoch_then_resumed_equals_uninterrupted(tmp_path, train):
    uninterrupted = train(tmp_path)
    checkpoint = Checkpoint(tmp_path / "ckpt", "stage")
    with pytest.raises(_Killed):
        train(tmp_path, checkpoint, _killed_in_second_epoch)
    assert torch.load(checkpoint.path, weights_only=True)["progress"]["epoch"] == 1
    seen = []
    resumed = train(tmp_path, checkpoint, lambda stage, epoch, *a: seen.append(epoch))
    assert seen == [2]  # only the second epoch ran
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


@pytest.mark.parametrize("diverge", [lambda p: _backbone(p, presence_scale=float("nan")),
                                     lambda p: _clip(p, lr=float("inf")),
                                     lambda p: _localizer(p, lr=float("inf"))], ids=["backbone", "clip", "localizer"])
def test_a_diverging_trainer_stops_with_one_line(tmp_path, diverge):
    with pytest.raises(NonFiniteLossError, match=r"is (nan|inf|-inf) at .+ epoch \d+, step \d+"):
        diverge(tmp_path)


def test_an_interrupted_cached_artefact_resumes_and_its_checkpoint_goes(tmp_path):
    """``benchmark.cache.cached_state`` hands the training a checkpoint beside the cache file: killed midway, the
    next request continues from the last epoch; once the weights are saved the checkpoint is removed."""
    from benchmark.cache import cached_state

    x, y = _regression()
    path = tmp_path / "artefact.pt"

    def trainer(on_epoch):
        def train(checkpoint):
            model.load_state_dict(initial)
            loop = TrainLoop("artefact", model, torch.optim.SGD(model.parameters(), lr=0.1),
                             torch.Generator().manual_seed(0), len(x), 4, 3, checkpoint=checkpoint, on_epoch=on_epoch)
            loop.run(lambda batch: {"loss": torch.nn.functional.mse_loss(model(x[batch.mine]), y[batch.mine])})
        return train

    model = torch.nn.Linear(3, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    assert cached_state(tmp_path / "whole.pt", model, trainer(lambda *a: None))
    whole = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(_Killed):
        cached_state(path, model, trainer(_killed_in_second_epoch))
    assert (tmp_path / "artefact.pt.partial.pt").is_file() and not path.exists()
    seen = []
    assert cached_state(path, model, trainer(lambda stage, epoch, *a: seen.append(epoch)))
    assert seen == [2, 3] and not (tmp_path / "artefact.pt.partial.pt").exists()
    assert all(torch.equal(whole[k], v) for k, v in torch.load(path, weights_only=True).items())
