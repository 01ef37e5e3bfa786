"""Golden-value tests of the kd losses, the distillers' plumbing and the intrinsic-dimension estimator."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpdl.analysis.intrinsic_dimension import intrinsic_dimension
from cvpdl.distill.base import Distiller
from cvpdl.distill.fitnet import FitNet, FitNetConfig
from cvpdl.distill.gld import GLD, GLDConfig
from cvpdl.distill.logit_kd import LogitKD, LogitKDConfig
from cvpdl.distill.losses import gld_relation, relation_matrix, standardize
from cvpdl.distill.networks import ConvNet, NetConfig
from cvpdl.distill.reverse_feature_kd import EmbeddingMimic, ReverseFeatureKD, ReverseKDConfig
from cvpdl.distill.student_baseline import StudentBaseline
from cvpdl.distill.training import ClassificationData, TrainConfig, step_schedule
from cvpdl.errors import UserInputError
from cvpdl.losses import distillation_kl
from cvpdl.population import Member

TEACHER = NetConfig(widths=(8, 16), blocks_per_stage=1, embedding_dim=6)
STUDENT = NetConfig(widths=(4, 8), blocks_per_stage=1, embedding_dim=6)


def test_distillation_kl_uses_t_squared_and_batchmean():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[math.log(3.0) * 2, 0.0], [0.0, 0.0]])  # at T=2 row 0 becomes softmax(log 3, 0) = [.75, .25]
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    # T² = 4, batch of 2
    assert distillation_kl(s, t, temperature=2.0).item() == pytest.approx(kl_row0 * 4 / 2, rel=1e-5)


def test_standardize_rows():
    z = standardize(torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]]))
    assert z[0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)
    assert z.mean(dim=1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert z.std(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_relation_matrix_hand_value():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # squared distances: d01 = 25, d02 = 16, d12 = 9 → each row divided by its L2 norm (official F.normalize)
    r = relation_matrix(x)
    assert r[0].tolist() == pytest.approx([0.0, 25 / math.sqrt(881), 16 / math.sqrt(881)], rel=1e-5)
    assert r[1].tolist() == pytest.approx([25 / math.sqrt(706), 0.0, 9 / math.sqrt(706)], rel=1e-5)
    assert r[2].tolist() == pytest.approx([16 / math.sqrt(337), 9 / math.sqrt(337), 0.0], rel=1e-5)
    assert gld_relation(x, x).item() == 0.0
    assert gld_relation(x, 2 * x).item() == pytest.approx(0.0, abs=1e-7)  # scale-free, as intended
    y = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # squared distances 9, 16, 25
    expected = sum((relation_matrix(x)[i, j].item() - relation_matrix(y)[i, j].item()) ** 2
                   for i in range(3) for j in range(3)) / 9
    assert gld_relation(y, x).item() == pytest.approx(expected, rel=1e-5)


def _paper_gld(student, teacher, x, y, alpha, beta, grid):
    """GLD written out from the paper (eqs. for L_ND, L_global, L_local, D(Z), L_relation) with explicit loops,
    on nets in eval mode: no library loss, no shared helper."""
    def head(net, pooled):
        return net.classifier(net.embed(pooled))

    def l_nd(z_t, z_s):  # (1/n) Σ_i KL(ψ(z_t,i / σ(z_t,i)) ‖ ψ(z_s,i / σ(z_s,i)))
        total = 0.0
        for zt, zs in zip(z_t, z_s):
            p_t = torch.exp(zt / zt.std()) / torch.exp(zt / zt.std()).sum()
            p_s = torch.exp(zs / zs.std()) / torch.exp(zs / zs.std()).sum()
            total += (p_t * torch.log(p_t / p_s)).sum()
        return total / len(z_t)

    f_s, f_t = student.feature_map(x), teacher.feature_map(x)
    h, w = f_s.shape[2] // grid, f_s.shape[3] // grid
    z_s, z_t = [head(student, f_s.mean(dim=(2, 3)))], [head(teacher, f_t.mean(dim=(2, 3)))]
    for i in range(grid):
        for j in range(grid):
            z_s.append(head(student, f_s[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w].mean(dim=(2, 3))))
            z_t.append(head(teacher, f_t[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w].mean(dim=(2, 3))))
    task = -torch.log_softmax(z_s[0], dim=1)[torch.arange(len(y)), y].mean()
    l_global = l_nd(z_t[0], z_s[0])
    l_local = sum(l_nd(z_t[r], z_s[r]) for r in range(1, grid * grid + 1))

    def dist_matrix(zs):  # D(Z): squared L2 distances of Z = Z^0 ∪ ... ∪ Z^L, rows over their L2 norm
        rows = torch.cat(zs)  # another row order than GLD's: the loss is invariant to a shared permutation
        m = len(rows)
        d = torch.tensor([[float(((rows[a] - rows[c]) ** 2).sum()) for c in range(m)] for a in range(m)])
        return d / d.pow(2).sum(dim=1, keepdim=True).sqrt()

    d_s, d_t = dist_matrix(z_s), dist_matrix(z_t)
    relation = ((d_t - d_s) ** 2).sum() / d_s.numel()
    return {"loss_ce": (1 - alpha) * task, "loss_global": alpha * l_global, "loss_local": l_local,
            "loss_relation": beta * relation}


def test_gld_matches_the_paper_equations():
    torch.manual_seed(0)
    teacher, student = ConvNet(TEACHER, 5).eval(), ConvNet(STUDENT, 5).eval()
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 4])
    gld = GLD(student, teacher, GLDConfig(alpha=0.7, beta=500.0, grid=2)).eval()
    with torch.no_grad():
        ours = gld.losses(x, y, teacher(x))
        paper = _paper_gld(student, teacher, x, y, alpha=0.7, beta=500.0, grid=2)
    assert set(ours) == set(paper)
    for name in paper:
        assert ours[name].item() == pytest.approx(paper[name].item(), rel=1e-4), name


def _official_gld(student, teacher, x, y, alpha=0.7, beta=500.0, div=2):
    """``GLDLoss.forward`` of the official code (github.com/Youmin-Kim/GLD, ``gld.py`` at ec3b931), its operations
    kept (AvgPool2d regions, ``t_fc`` on pooled maps, ``mean_var_norm``, ``F.kl_div`` batchmean, the mm-based
    ``dist_preserve_loss``). Transcribed, not vendored: that repository carries no licence. ``fc`` is each net's
    own head (embedding + classifier), in eval mode as the official teacher."""
    def fc(net, pen):
        return net.classifier(net.embed(pen))

    def mean_var_norm(logit):
        return logit / logit.std(1).unsqueeze(1)

    def dist_preserve_loss(t, s):
        bsz = s.size()[0]
        f_s, f_t = s.view(bsz, -1), t.view(bsz, -1)
        s_square = f_s.pow(2).sum(dim=1)
        g_s = F.normalize(s_square.unsqueeze(1) + s_square.unsqueeze(0) - 2. * torch.mm(f_s, torch.t(f_s)))
        t_square = f_t.pow(2).sum(dim=1)
        g_t = F.normalize(t_square.unsqueeze(1) + t_square.unsqueeze(0) - 2. * torch.mm(f_t, torch.t(f_t)))
        g_diff = g_t - g_s
        return (g_diff * g_diff).view(-1, 1).sum(0) / (bsz * bsz)

    t_f, s_f = teacher.feature_map(x), student.feature_map(x)
    spatial_size = s_f.shape[-1]
    local_pool = torch.nn.AvgPool2d(spatial_size // div, stride=spatial_size // div)
    global_pool = torch.nn.AvgPool2d(spatial_size, stride=1)
    logits = {}
    for name, net, f in (("t", teacher, t_f), ("s", student, s_f)):
        pen = global_pool(f).view(f.size(0), -1)
        local = local_pool(f)
        local = local.view(local.size(0), local.size(1), -1).transpose(dim0=2, dim1=1).flatten(start_dim=0, end_dim=1)
        logits[name] = fc(net, pen), fc(net, local)
    (t_global, t_local), (s_global, s_local) = logits["t"], logits["s"]
    task_loss = F.cross_entropy(s_global, y)
    global_loss = F.kl_div(F.log_softmax(mean_var_norm(s_global), dim=1), F.softmax(mean_var_norm(t_global), dim=1),
                           reduction="batchmean")
    local_loss = F.kl_div(F.log_softmax(mean_var_norm(s_local), dim=1), F.softmax(mean_var_norm(t_local), dim=1),
                          reduction="batchmean")
    relation_loss = dist_preserve_loss(torch.cat((t_global, t_local)), torch.cat((s_global, s_local)))
    return (1. - alpha) * task_loss + alpha * global_loss + div * div * local_loss + beta * relation_loss.squeeze()


@pytest.mark.parametrize("eps, rel", [(0.0, 1e-10), (1e-7, 1e-6)])
def test_gld_matches_the_official_code_forward_and_backward(monkeypatch, eps, rel):
    """Exact with the official z / std; the declared 1e-7 guard of ``standardize`` moves it by ~1e-7."""
    monkeypatch.setattr("cvpdl.distill.gld.standardize", lambda z: standardize(z, eps=eps))
    torch.manual_seed(0)
    teacher, student = ConvNet(TEACHER, 5).double().eval(), ConvNet(STUDENT, 5).double().eval()
    x, y = torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 4])
    gld = GLD(student, teacher, GLDConfig(alpha=0.7, beta=500.0, grid=2)).eval()
    with torch.no_grad():
        teacher_out = teacher(x)
    ours = sum(gld.losses(x, y, teacher_out).values())
    ours_grads = torch.autograd.grad(ours, list(student.parameters()))
    official = _official_gld(student, teacher, x, y)
    official_grads = torch.autograd.grad(official, list(student.parameters()))
    assert ours.item() == pytest.approx(official.item(), rel=rel)
    for (name, _), a, b in zip(student.named_parameters(), ours_grads, official_grads):
        torch.testing.assert_close(a, b, rtol=100 * rel, atol=1e-12, msg=name)


def test_region_rows_use_the_whole_image_batch_statistics_in_training():
    torch.manual_seed(0)
    net = ConvNet(STUDENT, 5).train()
    fmap = net.feature_map(torch.randn(6, 3, 16, 16))
    running = net.embed[1].running_mean.clone()
    local = net.local_logits(fmap, grid=2)
    torch.testing.assert_close(net.embed[1].running_mean, running)  # regions never move the running statistics
    linear, norm = net.embed
    whole = linear(fmap.mean(dim=(2, 3)))
    top_left = linear(fmap[:, :, :fmap.shape[2] // 2, :fmap.shape[3] // 2].mean(dim=(2, 3)))
    normed = (top_left - whole.mean(0)) / torch.sqrt(whole.var(0, unbiased=False) + norm.eps) * norm.weight + norm.bias
    torch.testing.assert_close(local[:, 0], net.classifier(normed), atol=1e-5, rtol=1e-5)


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


TEACHER3 = NetConfig(widths=(4, 8, 16), blocks_per_stage=1, embedding_dim=6)
STUDENT3 = NetConfig(widths=(2, 4, 8), blocks_per_stage=1, embedding_dim=6)


def test_fitnet_hints_at_the_middle_stage_through_mdistiller_convreg():
    torch.manual_seed(0)
    teacher, student = ConvNet(TEACHER3, 5).eval(), ConvNet(STUDENT3, 5)
    fitnet = FitNet(student, teacher, FitNetConfig()).eval()
    conv, bn, relu = fitnet.regressor  # ConvReg: conv (with bias) → BatchNorm2d → ReLU
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 8, (1, 1)) and conv.bias is not None
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert sum(p.numel() for p in fitnet.regressor.parameters()) == 4 * 8 + 8 + 2 * 8
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        teacher_out = fitnet.teacher_outputs(x)
        losses = fitnet.losses(x, y, teacher_out)
        middle_t = teacher.stages[1](teacher.stages[0](x))  # 8 × 4 × 4, the middle of three stages
        middle_s = student.stages[1](student.stages[0](x))
        regressed = torch.relu((conv(middle_s) - bn.running_mean[:, None, None])
                               / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
                               * bn.weight[:, None, None] + bn.bias[:, None, None])
    assert set(teacher_out) == {"stage_map"} and teacher_out["stage_map"].shape == (2, 8, 4, 4)
    torch.testing.assert_close(teacher_out["stage_map"], middle_t)
    assert set(losses) == {"loss_ce", "loss_hint"}
    assert losses["loss_hint"].item() == pytest.approx(100.0 * ((regressed - middle_t) ** 2).mean().item(), rel=1e-5)
    assert (fitnet.regressor(torch.randn(2, 4, 4, 4)) >= 0).all()  # matches the post-ReLU target's range


def test_fitnet_rejects_a_stage_the_nets_do_not_have():
    with pytest.raises(UserInputError, match="hint_stage=3"):
        FitNet(ConvNet(STUDENT3, 5), ConvNet(TEACHER3, 5), FitNetConfig(hint_stage=3))


@pytest.fixture(scope="module")
def init_batch():
    """A batch with a learnable class signal and a teacher fitted on it for a few steps, so that its logits and
    features carry class structure, as at the start of a real distillation run (student at initialisation)."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    y = torch.arange(64) % 5
    x[torch.arange(64), y % 3] += 1.5
    teacher = ConvNet(TEACHER3, 5)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(teacher(x)["logits"], y).backward()
        optimizer.step()
    return x, y, teacher.eval().requires_grad_(False)


@pytest.mark.parametrize("make", [
    lambda s, t: LogitKD(s, t, LogitKDConfig()),
    lambda s, t: GLD(s, t, GLDConfig()),
    lambda s, t: FitNet(s, t, FitNetConfig()),
    lambda s, t: EmbeddingMimic(t, s, ce_weight=1.0, feature_weight=ReverseKDConfig().reverse_weight),  # stage 1
], ids=["logit_kd", "gld", "fitnet", "reverse_stage1"])
def test_every_loss_term_carries_a_real_share_at_initialisation(make, init_batch):
    """Each weighted term is ≥ 1% of the total at the first step; GLD's old L1-normalised relation was ~0.01%."""
    x, y, teacher = init_batch
    torch.manual_seed(1)
    student = ConvNet(STUDENT3, 5)
    distiller = make(student, teacher).train()
    with torch.no_grad():
        losses = distiller.losses(x, y, distiller.teacher_outputs(x))
    total = sum(v.item() for v in losses.values())
    shares = {k: v.item() / total for k, v in losses.items()}
    assert len(shares) >= 2 and all(share >= 0.01 for share in shares.values()), shares


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


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 16, 16, generator=g), torch.arange(24) % 5
    return ClassificationData(x[:16], y[:16], x[16:20], y[16:20], x[20:], y[20:], num_classes=5)


def _fit(distiller, cfg, teacher, data):
    fit, = distiller.fit(cfg, lambda: ConvNet(STUDENT3, 5), [teacher], data, TrainConfig(epochs=1, batch_size=8),
                         [Member(torch.Generator().manual_seed(0))])
    return fit


@pytest.mark.parametrize("distiller, cfg, extra", [(LogitKD, LogitKDConfig(), 0), (GLD, GLDConfig(), 0),
                                                   (FitNet, FitNetConfig(), 4 * 8 + 8 + 2 * 8)],
                         ids=["logit_kd", "gld", "fitnet"])
def test_default_fit_trains_a_fresh_student_and_never_the_teacher(distiller, cfg, extra, tiny_data):
    torch.manual_seed(0)
    teacher = ConvNet(TEACHER3, 5).train()  # left in training mode: the distiller must force it into eval
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit = _fit(distiller, cfg, teacher, tiny_data)
    assert not teacher.training
    for k, v in teacher.state_dict().items():  # weights and batch-norm statistics
        torch.testing.assert_close(v, before[k], msg=k)
    assert len(fit.history.test_top1) == 1 and fit.extra_parameters == extra
    assert fit.teacher_after_reverse is None and fit.student_alone is None


def test_a_method_that_needs_no_teacher_is_handed_none(tiny_data):
    class Unusable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the student baseline must not run the teacher")

    assert not StudentBaseline.needs_teacher and Distiller.needs_teacher
    fit = _fit(StudentBaseline, None, Unusable(), tiny_data)
    assert fit.extra_parameters == 0


def test_reverse_kd_fit_runs_its_three_stages(tiny_data):
    torch.manual_seed(0)
    teacher = ConvNet(TEACHER3, 5).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit = _fit(ReverseFeatureKD, ReverseKDConfig(teacher_epochs=1), teacher, tiny_data)
    for k, v in teacher.state_dict().items():  # stage 1 fine-tunes a copy
        torch.testing.assert_close(v, before[k], msg=k)
    assert fit.teacher_after_reverse is not teacher and fit.student_alone is not None
    assert set(fit.history.per_epoch) == {"top1", "loss_feature"}  # the history is stage 2's: feature only
    # the stage-2 student classifies with the reversed teacher's frozen classifier
    torch.testing.assert_close(fit.student.classifier.weight, fit.teacher_after_reverse.classifier.weight)


def test_base_distiller_is_abstract():
    with pytest.raises(TypeError, match="does not define its losses"):
        Distiller(ConvNet(STUDENT, 5)).losses(None, None, None)


def test_training_without_evaluation_gives_the_same_weights(tiny_data):
    """``evaluate=False`` (the cached teacher, reverse KD's stages 0 and 1) skips only the per-epoch top-1."""
    from cvpdl.distill.training import train

    states, histories = [], []
    for evaluate in (True, False):
        torch.manual_seed(0)
        net = ConvNet(STUDENT3, 5)
        histories.append(train(StudentBaseline(net), tiny_data, TrainConfig(epochs=2, batch_size=8),
                               torch.Generator().manual_seed(0), evaluate=evaluate))
        states.append(net.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert histories[0].per_epoch["loss_ce"] == histories[1].per_epoch["loss_ce"]
    assert "top1" not in histories[1].per_epoch and not histories[1].test_top1


def test_step_schedule_is_mdistillers_per_epoch_decay():
    """mdistiller: lr 0.05 × 0.1^(stages passed), stages after epochs 150, 180, 210 of 240; over 8 epochs of 3 steps
    the stages are epochs 5, 6, 7 (⌊0.625·8⌋, ⌊0.75·8⌋, ⌊0.875·8⌋): epoch 6 runs at 0.005, epoch 8 at 5e-5."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05, momentum=0.9)
    schedule = step_schedule(optimizer, TrainConfig(epochs=8), steps_per_epoch=3)
    per_epoch = []
    for _epoch in range(8):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        for _step in range(3):
            optimizer.step()
            schedule.step()
    assert per_epoch == pytest.approx([0.05] * 5 + [5e-3, 5e-4, 5e-5], rel=1e-9)
    assert TrainConfig() == TrainConfig(epochs=10, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                                        lr_decay_stages=(0.625, 0.75, 0.875), lr_decay_rate=0.1)
