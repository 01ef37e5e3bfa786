"""Golden-value tests of the kd losses, the distillers' plumbing and the intrinsic-dimension estimator."""
import math

import numpy as np
import pytest
import torch

from cvpdl.analysis.intrinsic_dimension import intrinsic_dimension
from cvpdl.distill.base import Distiller
from cvpdl.distill.fitnet import FitNet, FitNetConfig
from cvpdl.distill.gld import GLD, GLDConfig
from cvpdl.distill.losses import gld_relation, kd_kl, relation_matrix, standardize
from cvpdl.distill.networks import ConvNet, NetConfig
from cvpdl.distill.reverse_feature_kd import EmbeddingMimic

TEACHER = NetConfig(widths=(8, 16), blocks_per_stage=1, embedding_dim=6)
STUDENT = NetConfig(widths=(4, 8), blocks_per_stage=1, embedding_dim=6)


def test_kd_kl_uses_t_squared_and_batchmean():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[math.log(3.0) * 2, 0.0], [0.0, 0.0]])  # at T=2 row 0 becomes softmax(log 3, 0) = [.75, .25]
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(s, t, temperature=2.0).item() == pytest.approx(kl_row0 * 4 / 2, rel=1e-5)  # T² = 4, batch of 2


def test_standardize_rows():
    z = standardize(torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]]))
    assert z[0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)
    assert z.mean(dim=1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert z.std(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_relation_matrix_hand_value():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # squared distances: d01 = 25, d02 = 16, d12 = 9 → rows normalised by 41, 34, 25
    r = relation_matrix(x)
    assert r[0].tolist() == pytest.approx([0.0, 25 / 41, 16 / 41], rel=1e-5)
    assert r[1].tolist() == pytest.approx([25 / 34, 0.0, 9 / 34], rel=1e-5)
    assert gld_relation(x, x).item() == 0.0
    assert gld_relation(x, 2 * x).item() == pytest.approx(0.0, abs=1e-7)  # scale-free, as intended


def test_local_logits_go_through_the_shared_classifier():
    torch.manual_seed(0)
    net = ConvNet(TEACHER, num_classes=5).eval()
    fmap = net.feature_map(torch.randn(2, 3, 16, 16))
    local = net.local_logits(fmap, grid=2)
    assert local.shape == (2, 4, 5)
    top_left = fmap[:, :, :fmap.shape[2] // 2, :fmap.shape[3] // 2].mean(dim=(2, 3))
    torch.testing.assert_close(local[:, 0], net.classifier(net.embed(top_left)), atol=1e-5, rtol=1e-5)


def test_gld_losses_are_named_and_teacher_stays_frozen():
    torch.manual_seed(0)
    teacher, student = ConvNet(TEACHER, 5), ConvNet(STUDENT, 5)
    gld = GLD(student, teacher, GLDConfig()).train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        teacher_out = teacher(x)
    losses = gld.losses(x, y, teacher_out)
    assert set(losses) == {"loss_ce", "loss_global", "loss_local", "loss_relation"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert {id(p) for p in gld.trainable_parameters()} == {id(p) for p in student.parameters()}


def test_gld_equals_pure_ce_term_when_student_copies_teacher():
    torch.manual_seed(0)
    teacher = ConvNet(TEACHER, 5).eval()
    student = ConvNet(TEACHER, 5)
    student.load_state_dict(teacher.state_dict())
    gld = GLD(student, teacher, GLDConfig())
    gld.eval()  # same batch-norm statistics as the teacher
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    losses = gld.losses(x, y, teacher(x))
    for name in ("loss_global", "loss_local", "loss_relation"):
        assert losses[name].item() == pytest.approx(0.0, abs=1e-5)


def test_fitnet_regressor_maps_student_channels_to_teacher_channels():
    teacher, student = ConvNet(TEACHER, 5), ConvNet(STUDENT, 5)
    fitnet = FitNet(student, teacher, FitNetConfig())
    conv = fitnet.regressor[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        losses = fitnet.losses(x, torch.tensor([0, 1]), teacher(x))
    assert set(losses) == {"loss_ce", "loss_hint"}
    extra = sum(p.numel() for p in fitnet.regressor.parameters())
    assert extra == 8 * 16 + 2 * 16


def test_reverse_stage_losses():
    torch.manual_seed(0)
    model, target = ConvNet(TEACHER, 5), ConvNet(STUDENT, 5)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    mimic = EmbeddingMimic(model, target, ce_weight=0.0, feature_weight=2.0).eval()
    with torch.no_grad():
        target_out = target.eval()(x)
        losses = mimic.losses(x, y, target_out)
        expected = 2.0 * ((model(x)["embedding"] - target_out["embedding"]) ** 2).mean()
    assert set(losses) == {"loss_feature"}  # stage 2 is feature-only
    assert losses["loss_feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    with_ce = EmbeddingMimic(model, target, ce_weight=1.0, feature_weight=1.0).eval()
    with torch.no_grad():
        assert set(with_ce.losses(x, y, target_out)) == {"loss_feature", "loss_ce"}


def test_twonn_recovers_a_plane_in_10d():
    rng = np.random.default_rng(0)
    plane = rng.uniform(size=(1500, 2)) @ rng.normal(size=(2, 10))
    dims = intrinsic_dimension(plane)
    assert dims["twonn"] == pytest.approx(2.0, abs=0.25)
    assert dims["mle"] == pytest.approx(2.0, abs=0.25)
    cube = rng.uniform(size=(1500, 6))
    assert intrinsic_dimension(cube)["twonn"] == pytest.approx(6.0, abs=1.0)


def test_base_distiller_is_abstract():
    with pytest.raises(TypeError, match="does not define its losses"):
        Distiller(ConvNet(STUDENT, 5)).losses(None, None, None)
