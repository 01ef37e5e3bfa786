"""Golden-value tests of the ovd mechanics: losses, pseudo-labels, crops, RoIAlign geometry, score vs IoU."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from cvpdl.analysis.score_vs_iou import best_iou, jitter_boxes, score_iou_spearman
from cvpdl.losses import distillation_kl
from cvpdl.ovd.clip_crop import crop_and_resize, crop_bounds
from cvpdl.ovd.clip_model import region_features
from cvpdl.ovd.losses import (
    image_text_contrastive,
    mil_cross_entropy,
    multi_positive_cross_entropy,
    region_concept_contrastive,
    same_caption_mask,
)
from cvpdl.ovd.regionclip import global_boxes, pseudo_label, sample_regions


def test_multi_positive_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # softmax = [0.2, 0.6, 0.2]
    one = multi_positive_cross_entropy(logits, torch.tensor([[False, True, False]]))
    two = multi_positive_cross_entropy(logits, torch.tensor([[True, True, False]]))
    assert one.item() == pytest.approx(-math.log(0.6))
    assert two.item() == pytest.approx(-(math.log(0.2) + math.log(0.6)) / 2)


def test_image_text_loss_equals_open_clip_cliploss_for_unique_captions():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    scale = torch.tensor(10.0)
    ours = image_text_contrastive(img, txt, scale, same_caption_mask([f"c{i}" for i in range(6)]))
    assert ours.item() == pytest.approx(ClipLoss()(img, txt, scale).item(), rel=1e-6)


def test_duplicate_captions_are_positives():
    mask = same_caption_mask(["a", "b", "a"])
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dim=1)
    # rows 0 and 2 share a caption: each has two positives with probability e^10 / (2 e^10 + 1) each
    with_dups = image_text_contrastive(emb, emb, torch.tensor(10.0), mask)
    row0 = -math.log(math.exp(10) / (2 * math.exp(10) + 1))
    row1 = -math.log(math.exp(10) / (math.exp(10) + 2))
    assert with_dups.item() == pytest.approx((2 * row0 + row1) / 3, rel=1e-5)


def official_mil_cross_entropy(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RegionCLIP's ``MILCrossEntropy.forward`` (detectron2/utils/comm.py, avg_positives=False), written out."""
    logits = x - x.max(dim=1, keepdim=True).values
    probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    return -torch.log((target * probs).sum(dim=-1)).mean()


def test_region_concept_contrastive_hand_value():
    """One-way over the kept regions' label embeddings: region i vs columns j, positive where labels match."""
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # concept 2 is absent from the batch
    loss = region_concept_contrastive(regions, concepts, torch.tensor([0, 1, 0]), logit_scale=1.0)
    e = math.e
    row0 = -math.log(2 * e / (2 * e + 1))  # columns [c0, c1, c0]: logits [1, 0, 1], positives 0 and 2
    row1 = -math.log(e / (e + 2))  # logits [0, 1, 0], positive 1
    assert loss.item() == pytest.approx((2 * row0 + row1) / 3, rel=1e-6)


def test_region_concept_contrastive_matches_official_formula():
    torch.manual_seed(0)
    # float64: the official -log(sum of probabilities) underflows in float32 at T = 0.01
    regions = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    concepts = F.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 2, 2, 3, 0, 0, 2])
    target_embs = concepts[labels]
    label_mtx = (labels.view(-1, 1) == labels.view(1, -1)).float()
    official = official_mil_cross_entropy(regions @ target_embs.T / 0.01, label_mtx)
    ours = region_concept_contrastive(regions, concepts, labels, logit_scale=100.0)
    assert ours.item() == pytest.approx(official.item(), rel=1e-9)
    logits = torch.randn(3, 4)
    positives = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    assert mil_cross_entropy(logits, positives).item() == pytest.approx(
        official_mil_cross_entropy(logits, positives.float()).item(), rel=1e-6)


def test_distillation_kl_hand_value():
    student = torch.log(torch.tensor([[0.5, 0.5]]))
    teacher = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert distillation_kl(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_kl_equals_official_region_distill():
    """Official: F.kl_div(softmax(student_cos / T).log(), softmax(teacher_cos / T), 'batchmean')."""
    torch.manual_seed(1)
    student, teacher = torch.rand(5, 4), torch.rand(5, 4)
    official = F.kl_div(F.softmax(student / 0.01, dim=1).log(), F.softmax(teacher / 0.01, dim=1),
                        reduction="batchmean")
    assert distillation_kl(student / 0.01, teacher / 0.01).item() == pytest.approx(official.item(), rel=1e-4)


def test_pseudo_label_threshold():
    concepts = torch.eye(3)
    regions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # confident; uniform (max prob exactly 1/3)
    logits, labels, keep = pseudo_label(regions, concepts, temperature=0.01, threshold=0.5)
    assert labels[0].item() == 0 and keep.tolist() == [True, False]
    assert logits[0, 0].item() == pytest.approx(100.0)
    _, _, keep_low = pseudo_label(regions, concepts, temperature=0.01, threshold=0.1)
    assert keep_low.tolist() == [True, True]
    # nothing passes the threshold: the official code keeps every region
    _, _, keep_none = pseudo_label(regions[1:], concepts, temperature=0.01, threshold=0.5)
    assert keep_none.tolist() == [True]
    # restricted to the caption's concepts: region 1 may only be concept 2, so it is confident there
    allowed = torch.tensor([[True, True, True], [False, False, True]])
    _, labels, keep = pseudo_label(regions, concepts, 0.01, 0.5, allowed)
    assert labels.tolist() == [0, 2] and keep.tolist() == [True, True]


def test_sample_regions_and_global_boxes():
    pool = [np.arange(40, dtype=np.float32).reshape(10, 4), np.arange(8, dtype=np.float32).reshape(2, 4)]
    a = sample_regions(pool, 3, torch.Generator().manual_seed(0))
    b = sample_regions(pool, 3, torch.Generator().manual_seed(1))
    assert [len(x) for x in a] == [3, 2]
    assert len({tuple(r) for r in a[0].tolist()}) == 3 and {tuple(r) for r in a[0].tolist()} <= \
        {tuple(r) for r in pool[0].tolist()}
    assert not np.array_equal(a[0], b[0])  # a new subset each draw
    assert global_boxes(np.zeros((2, 48, 64, 3), np.uint8))[1].tolist() == [[0.0, 0.0, 64.0, 48.0]]


def test_crop_bounds_and_crop_contents():
    assert crop_bounds([1.5, 2.2, 4.1, 5.0], 10, 8) == (1, 2, 5, 5)
    assert crop_bounds([-3, -1, 0.2, 0.1], 10, 8) == (0, 0, 1, 1)  # clipped, at least one pixel
    assert crop_bounds([9.5, 7.5, 12, 11], 10, 8) == (9, 7, 10, 8)
    image = torch.arange(80, dtype=torch.float32).view(1, 8, 10)
    crop = crop_and_resize(image, np.array([[2, 3, 4, 5]]), size=2)  # a 2x2 crop at size 2 is unchanged
    assert crop[0, 0].tolist() == [[32.0, 33.0], [42.0, 43.0]]


def test_roi_align_region_features_hand_check():
    """On a stride-16 map whose value is the x pixel coordinate of each cell centre (a linear ramp),
    aligned RoIAlign returns, per output bin, the x coordinate of the bin centre."""
    xs = torch.arange(8, dtype=torch.float32) * 16 + 8
    fmap = xs.view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    out = region_features(fmap, [torch.tensor([[32.0, 0.0, 64.0, 64.0]])], side=2, stride=16)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0].tolist() == pytest.approx([40.0, 56.0])


def test_score_vs_iou_helpers():
    gt = np.array([[10, 10, 30, 30]], dtype=np.float32)
    assert best_iou(np.array([[10, 10, 30, 30], [20, 10, 40, 30]], np.float32), gt).tolist() == \
        pytest.approx([1.0, 1 / 3])
    jittered = jitter_boxes(gt, 50, 64, torch.Generator().manual_seed(0))
    assert jittered.shape == (50, 4) and (jittered >= 0).all() and (jittered <= 64).all()
    ious = best_iou(jittered, gt)
    assert ious.min() < 0.3 and ious.max() > 0.7  # proposals of every quality
    assert score_iou_spearman(np.array([1, 2, 3, 4.0]), np.array([0.1, 0.2, 0.4, 0.3])) == pytest.approx(0.8)
    assert math.isnan(score_iou_spearman(np.ones(4), np.arange(4.0)))


def test_regionclip_loss_terms_at_init(tmp_path):
    """At init the student is the teacher: the distillation KL is exactly 0 (as in the official code) and the two
    contrastive terms carry the loss; one optimizer step later the distillation term is no longer 0."""
    from cvpdl.data.captions import DIGIT_NAMES, concept_pool, prompt
    from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
    from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip
    from cvpdl.ovd.region_classifier import OvdContext
    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig

    torch.manual_seed(0)
    clip_cfg = TinyClipConfig()
    teacher = ClipEncoder(build_tiny_clip(clip_cfg).eval(), clip_cfg.context_length)
    split = load_digits_split(DigitsWorldConfig(), "train", 8, 0, tmp_path)
    ctx = OvdContext(teacher, split, None, list(DIGIT_NAMES))
    method = RegionClip(RegionClipConfig(keep_threshold=0.0))
    params = method.init_student(ctx)
    images = np.stack([split.image(i) for i in range(8)])
    regions = [split.target(i)[0] for i in range(8)]
    concepts = concept_pool(split.captions, DIGIT_NAMES)
    with torch.no_grad():
        concept_emb = teacher.encode_text([prompt(c) for c in concepts])
        caption_emb = teacher.encode_text(split.captions)
    losses = method.losses(ctx, images, split.captions, regions, concepts, concept_emb, caption_emb)
    total = sum(losses.values())
    assert losses["loss_distill"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_region"].item() > 0.1 * total.item() and losses["loss_image"].item() > 0.1 * total.item()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = method.losses(ctx, images, split.captions, regions, concepts, concept_emb, caption_emb)
    assert after["loss_distill"].item() > 1e-3


def test_clip_training_augmentation_is_open_clip_transform_and_reproducible():
    import open_clip

    from cvpdl.ovd.tiny_clip_training import augmented

    transform = open_clip.image_transform(16, is_train=True, aug_cfg=open_clip.AugmentationCfg(scale=(0.9, 1.0)))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    a = augmented(transform, images, torch.Generator().manual_seed(0))
    b = augmented(transform, images, torch.Generator().manual_seed(0))
    c = augmented(transform, images, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    # scale (1, 1) on a square image: RandomResizedCrop falls back to the whole image, only normalised
    identity = open_clip.image_transform(16, is_train=True, aug_cfg=open_clip.AugmentationCfg(scale=(1.0, 1.0)))
    whole = augmented(identity, images, torch.Generator().manual_seed(0))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(whole, expected, atol=1e-5)


OFFICIAL_FIXTURE = Path(__file__).parent / "fixtures" / "regionclip_official_losses.py.txt"


def _official_regionclip(**attributes):
    """The official ``PretrainFastRCNN`` loss methods (verbatim text fixture), on an instance carrying only the
    attributes they read; its teacher backbone and RoI heads return given region features."""
    namespace: dict = {}
    exec(compile(OFFICIAL_FIXTURE.read_text(), str(OFFICIAL_FIXTURE), "exec"), namespace)

    class Teacher:
        layer4 = attnpool = None

        def __call__(self, tensor):
            return None

    class Official(namespace["PretrainFastRCNN"]):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.teacher_backbone, self.pixel_mean, self.context_length = Teacher(), torch.zeros(1), 77
            self.gather_gpus, self.only_eot = False, True
            for key, value in attributes.items():
                object.__setattr__(self, key, value)

        device = torch.device("cpu")

    return Official()


def test_regionclip_losses_equal_official_forward_and_backward():
    """The project's three losses (``RegionClip.losses``, official options) against the official ``PretrainFastRCNN``
    code run verbatim, on hand-made float64 features: same values and same gradients w.r.t. the student's raw region
    and global features. The teacher keeps its own s_temp 0.01 while CLSS_TEMP is 0.05 (a tied temperature fails)."""
    from types import SimpleNamespace

    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig

    gen = torch.Generator().manual_seed(3)
    sizes, dim, n_concepts = [3, 2, 3], 6, 5
    n_regions = sum(sizes)
    teacher_raw = torch.randn(n_regions, dim, generator=gen, dtype=torch.float64)
    concept_raw = torch.randn(n_concepts, dim, generator=gen, dtype=torch.float64)
    caption_raw = torch.randn(len(sizes), dim, generator=gen, dtype=torch.float64)
    region_raw = torch.randn(n_regions, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    global_raw = torch.randn(len(sizes), dim, generator=gen, dtype=torch.float64, requires_grad=True)
    # teacher regions 0-3 lie close to concepts 0, 1, 1, 2 (confident at s_temp 0.01), regions 4-7 halfway between
    # concepts 3 and 4 (about 0.5 each: below the keep threshold)
    with torch.no_grad():
        unit = F.normalize(concept_raw, dim=1)
        teacher_raw[:4] = concept_raw[[0, 1, 1, 2]] + 0.05 * teacher_raw[:4]
        teacher_raw[4:] = unit[3] + unit[4] + 1e-4 * teacher_raw[4:]

    official = _official_regionclip(
        concept_emb=concept_raw, teacher_concept_emb=concept_raw, concept_thres=0.7, matching_temp=0.05,
        teacher_roi_heads=lambda *args, **kwargs: teacher_raw,
        lang_encoder=SimpleNamespace(encode_text=lambda text, only_eot: caption_raw[text[:, 0]]))
    batched_inputs = [(None, torch.full((77,), i)) for i in range(len(sizes))]
    expected: dict = {}
    official.region_concept_matching(SimpleNamespace(tensor=None), None, None, region_raw, expected)
    official.image_text_matching(batched_inputs, None, region_raw, expected, global_feats=global_raw)

    class Stubbed(RegionClip):
        def _teacher_embeddings(self, ctx, images, regions):
            return F.normalize(teacher_raw, dim=1)

    method = Stubbed(RegionClipConfig(temperature=0.05, keep_threshold=0.7, label_pool="all",
                                      caption_duplicates="negative"))
    method.student = SimpleNamespace(device=torch.device("cpu"))
    regions = [np.zeros((k, 4), np.float32) for k in sizes]
    ours = method.losses(None, np.zeros((len(sizes), 1)), [f"caption {i}" for i in range(len(sizes))], regions,
                         [f"c{i}" for i in range(n_concepts)], F.normalize(concept_raw, dim=1),
                         F.normalize(caption_raw, dim=1),
                         lambda images, boxes: (F.normalize(region_raw, dim=1), F.normalize(global_raw, dim=1)))
    kept = official.get_psuedo_concept_labels(SimpleNamespace(tensor=None), None, None)[2]
    assert 0 < kept.sum() < n_regions  # the keep threshold drops some regions, keeps others
    for name, official_name in (("loss_region", "loss_concept_contrastive"), ("loss_distill", "loss_region_distill"),
                                ("loss_image", "loss_img_txt_level")):
        assert ours[name].item() == pytest.approx(expected[official_name].item(), rel=1e-10), name
        got = torch.autograd.grad(ours[name], [region_raw, global_raw], retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(expected[official_name], [region_raw, global_raw], retain_graph=True,
                                   allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None), name
            if g is not None:
                assert torch.allclose(g, w, rtol=1e-9, atol=1e-12), name
    assert ours["loss_distill"].item() > 0 and ours["loss_region"].item() > 0


def test_regionclip_student_freezes_every_batchnorm(tmp_path):
    """FrozenBN (official): no batch-norm scale or shift is trained, in layers 2-4 either; their convolutions are."""
    from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip
    from cvpdl.ovd.region_classifier import OvdContext
    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig

    torch.manual_seed(0)
    teacher = ClipEncoder(build_tiny_clip(TinyClipConfig()).eval(), TinyClipConfig().context_length)
    method = RegionClip(RegionClipConfig())
    params = {id(p) for p in method.init_student(OvdContext(teacher, None, None, []))}
    visual = method.student.model.visual
    trained = {name for name, p in visual.named_parameters() if id(p) in params}
    assert "layer2.0.conv1.weight" in trained and "layer4.0.conv3.weight" in trained
    assert "attnpool.c_proj.weight" in trained and "layer1.0.conv1.weight" not in trained
    assert not {name for name in trained if ".bn" in name or "downsample.1" in name}
    assert all(not p.requires_grad for m in visual.modules() if isinstance(m, torch.nn.BatchNorm2d)
               for p in m.parameters())


def test_concept_list_file(tmp_path):
    from cvpdl.errors import UserInputError
    from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig, read_concept_list

    nouns = tmp_path / "nouns.txt"
    nouns.write_text("person\n\n  dog \ncat\ndog\n")
    assert read_concept_list(str(nouns)) == ["person", "dog", "cat"]
    assert RegionClip(RegionClipConfig(concept_list=str(nouns))).concept_vocabulary == ["person", "dog", "cat"]
    assert RegionClip(RegionClipConfig()).concept_vocabulary is None  # the class names the captions name
    (tmp_path / "empty.txt").write_text("\n \n")
    for path in (tmp_path / "missing.txt", tmp_path / "empty.txt"):
        with pytest.raises(UserInputError, match="regionclip.concept_list"):
            read_concept_list(str(path))


def test_pseudo_label_caption_without_pool_concept_is_unrestricted():
    regions = torch.tensor([[0.0, 1.0, 0.0]])
    allowed = torch.tensor([[False, False, False]])  # its caption names no concept of the pool
    _, labels, keep = pseudo_label(regions, torch.eye(3), 0.01, 0.5, allowed)
    assert labels.tolist() == [1] and keep.tolist() == [True]
