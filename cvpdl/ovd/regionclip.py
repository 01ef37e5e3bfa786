"""RegionCLIP (Zhong et al., CVPR 2022): region–text pretraining of CLIP's visual encoder.

Follows ``PretrainFastRCNN`` of the official ``detectron2/modeling/meta_arch/clip_rcnn.py``. Each iteration draws a
random subset of every image's class-agnostic proposal pool (official: 100 of 300 RPN proposals). The frozen teacher
CLIP pseudo-labels each region from its RoIAlign region feature over the concept pool
(``get_psuedo_concept_labels``: softmax(cos / s_temp) with its fixed ``s_temp = 0.01``, kept if its max exceeds 0.1;
if none is kept, all are). The concept pool is a noun list the user passes (``concept_list``, one concept a line, as
the official ``coco_nouns_4764.txt``) or, by default, the class names that the training captions name. The student
visual encoder, initialised from the teacher (stem and ``layer1`` frozen, ``FREEZE_AT: 2``; every BatchNorm frozen,
``NORM: FrozenBN``), learns with three losses at the matching temperature ``CLSS_TEMP`` (0.01, separate from the
teacher's): region–concept contrastive (one-way ``MILCrossEntropy`` over the concepts of the batch's kept regions),
KL distillation to the teacher's concept scores (kept regions) and image–text contrastive on a global RoIAlign box
over the whole image. Concept and caption embeddings come from the teacher's frozen text encoder; gradients are
clipped at norm 5.

Options beyond the official code: ``label_pool="caption"`` restricts each region's pseudo-label to the concepts of
its own caption; ``caption_duplicates="positive"`` treats equal captions in a batch as positives;
``teacher_view="crop"`` lets the teacher score pixel crops instead of RoIAlign regions; ``proposals="random"`` is
the random-box ablation.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.captions import concept_pool, parse_concepts, prompt
from cvpdl.engine import Batch, TrainLoop, log_losses
from cvpdl.errors import NonFiniteLossError, UserInputError
from cvpdl.ovd.clip_crop import ClipCrop
from cvpdl.ovd.clip_model import ClipEncoder, visual_region_embeddings
from cvpdl.ovd.clip_roi import ClipRoi, embed_regions_roi
from cvpdl.losses import distillation_kl
from cvpdl.ovd.losses import image_text_contrastive, region_concept_contrastive, same_caption_mask
from cvpdl.ovd.localizer import propose
from cvpdl.ovd.region_classifier import OvdContext
from cvpdl.population import Member, Population, PopulationLoop, recipe_optimizer
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class RegionClipConfig:
    epochs: int = 1
    images: int = 1500  # training images used (from the start of the training split)
    batch_size: int = 32
    lr: float = 1e-4
    grad_clip_norm: float = 5.0  # official SOLVER.CLIP_GRADIENTS (norm, 5.0)
    proposal_pool: int = 18  # localizer proposals kept per image (NMS below, no score threshold)
    proposal_nms: float = 0.5  # official OFFLINE_RPN_NMS_THRESH
    regions_per_image: int = 6  # drawn at random from the pool every iteration (official: 100 of 300)
    proposals: str = "localizer"  # or "random": RegionCLIP's random-box ablation
    teacher_view: str = "roi"  # official: RoIAlign region features; "crop" scores pixel crops
    label_pool: str = "caption"  # or "all" (official: the whole concept pool)
    caption_duplicates: str = "positive"  # or "negative" (official: one positive per image, the diagonal)
    temperature: float = 0.01  # student matching (CLSS_TEMP)
    teacher_temperature: float = 0.01  # teacher pseudo-labels (official s_temp: fixed, never tied to CLSS_TEMP)
    concept_list: str = ""  # text file, one concept noun a line (official: 4,764 COCO nouns); "" = class names
    keep_threshold: float = 0.1  # keep a pseudo-label when its max probability exceeds this (CONCEPT_THRES)
    weight_region: float = 1.0
    weight_image: float = 1.0
    weight_distill: float = 1.0
    image_scale: float = 2.0


# the student's AdamW weight decay (official WEIGHT_DECAY 1e-4; untuned, so not a config field)
WEIGHT_DECAY = 1e-4
# the config fields a population's members may differ in: the recipe's lr and what the losses and labels read
MEMBER_FIELDS = ("lr", "temperature", "teacher_temperature", "keep_threshold", "weight_region", "weight_image",
                 "weight_distill", "proposal_nms")


@dataclass(frozen=True)
class _Corpus:
    """What pretraining reads, the same for every member: the first ``images`` training canvases, their captions,
    the concept pool and the teacher's embeddings of the concepts' prompts and of the captions."""

    images: np.ndarray
    captions: list[str]
    concepts: list[str]
    concept_emb: torch.Tensor
    caption_emb: torch.Tensor


def random_boxes(n: int, size: int, generator: torch.Generator, min_side: float = 8.0) -> np.ndarray:
    xy = torch.rand(n, 2, generator=generator) * (size - min_side)
    wh = min_side + torch.rand(n, 2, generator=generator) * (size / 2 - min_side)
    return torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).numpy()


def pseudo_label(teacher_region_emb: torch.Tensor, concept_emb: torch.Tensor, temperature: float, threshold: float,
                 allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits (cos / T), argmax labels and the keep mask (max softmax probability > threshold; when no
    region passes, every region is kept, as the official ``get_psuedo_concept_labels`` does).

    ``allowed`` (regions × concepts, bool) restricts each region's labels, e.g. to its caption's concepts (a
    region whose row allows nothing, a caption naming no concept of the pool, is not restricted); the returned
    logits stay unrestricted (they are the distillation target).
    """
    logits = teacher_region_emb @ concept_emb.T / temperature
    if allowed is not None:
        allowed = allowed | ~allowed.any(dim=1, keepdim=True)
    masked = logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))
    confidence, labels = masked.softmax(dim=1).max(dim=1)
    keep = confidence > threshold
    return logits, labels, keep if keep.any() else torch.ones_like(keep)


def read_concept_list(path: str) -> list[str]:
    """The concepts of a noun list, one a line (blank lines skipped, first occurrence kept), as the official
    ``tools/extract_concept_features.py`` reads its concept file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"regionclip.concept_list: cannot read {path!r} ({error})") from None
    concepts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not concepts:
        raise UserInputError(f"regionclip.concept_list: {path!r} holds no concept (one noun a line)")
    return concepts


def sample_regions(pool: list[np.ndarray], k: int, generator: torch.Generator) -> list[np.ndarray]:
    """A random subset of at most ``k`` boxes of every image's pool (official: ``torch.randperm(len(p))[:k]``)."""
    return [boxes[torch.randperm(len(boxes), generator=generator)[:k].numpy()] for boxes in pool]


def _block(n: int) -> slice:
    """This rank's images of a global batch of ``n`` given in ``ddp.gathered`` order (all of them with one rank)."""
    rank, world = ddp.rank_world()
    sizes = [len(range(r, n, world)) for r in range(world)]
    return slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))


def _roi_rows(images: np.ndarray, regions: list[np.ndarray], factor: float) -> torch.Tensor:
    """``roi_align``'s (K, 5) rows (image index, xyxy × ``factor``): each image's whole box first, in image order,
    then every image's ``regions``."""
    boxes = global_boxes(images) + regions
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i % len(images))), torch.as_tensor(b) * factor], dim=1)
                      for i, b in enumerate(boxes)])


def global_boxes(images: np.ndarray) -> list[np.ndarray]:
    """One box over each whole image (official ``create_global_proposals``)."""
    h, w = images.shape[1:3]
    return [np.array([[0.0, 0.0, w, h]], dtype=np.float32) for _ in range(len(images))]


class RegionClip(ClipRoi):
    population = True  # seeds and settings train as one population (``fit_population``, ``run --population``)

    def __init__(self, cfg: RegionClipConfig):
        super().__init__(cfg.image_scale)
        for key, choices in (("proposals", ("localizer", "random")), ("teacher_view", ("roi", "crop")),
                             ("label_pool", ("caption", "all")), ("caption_duplicates", ("positive", "negative"))):
            if getattr(cfg, key) not in choices:
                raise UserInputError(f"regionclip.{key} must be one of {', '.join(choices)}; got {getattr(cfg, key)!r}")
        if cfg.regions_per_image < 1 or cfg.proposal_pool < 1:
            raise UserInputError("regionclip.regions_per_image and regionclip.proposal_pool must be at least 1")
        if cfg.temperature <= 0 or cfg.teacher_temperature <= 0:
            raise UserInputError("regionclip.temperature and regionclip.teacher_temperature must be positive")
        self.cfg = cfg
        self.concept_vocabulary = read_concept_list(cfg.concept_list) if cfg.concept_list else None
        self.student: ClipEncoder | None = None
        self.diagnostics: dict[str, float] = {}  # of the pseudo-labels, set by ``fit`` (``diagnose``)

    def encoder(self, ctx: OvdContext) -> ClipEncoder:
        return self.student or ctx.clip

    def proposal_pool(self, ctx: OvdContext, n: int, generator: torch.Generator) -> list[np.ndarray]:
        """The boxes every iteration samples from, per training image."""
        size = ctx.train.image(0).shape[0]
        if self.cfg.proposals == "random":
            return [random_boxes(self.cfg.proposal_pool, size, generator) for _ in range(n)]
        pool = propose(ctx.localizer, ctx.train.subset(list(range(n))), detections_per_image=self.cfg.proposal_pool,
                       nms_threshold=self.cfg.proposal_nms, score_threshold=0.0)
        return [boxes for boxes, _ in pool]

    def _teacher_embeddings(self, ctx: OvdContext, images: np.ndarray, regions: list[np.ndarray]) -> torch.Tensor:
        if self.cfg.teacher_view == "crop":
            return ClipCrop().embed_regions(ctx, images, regions)
        return embed_regions_roi(ctx.clip, images, regions, self.cfg.image_scale, ctx.batch_size)

    def _allowed(self, captions: list[str], regions: list[np.ndarray], concepts: list[str]) -> torch.Tensor | None:
        if self.cfg.label_pool == "all":
            return None
        rows = []
        for caption, boxes in zip(captions, regions):
            named = set(parse_concepts(caption, concepts))
            rows += [[c in named for c in concepts]] * len(boxes)
        return torch.tensor(rows, dtype=torch.bool).reshape(-1, len(concepts))

    def losses(self, ctx: OvdContext, images: np.ndarray, captions: list[str], regions: list[np.ndarray],
               concepts: list[str], concept_emb: torch.Tensor, caption_emb: torch.Tensor,
               student_forward=None) -> dict[str, torch.Tensor]:
        """The three pretraining losses of one batch (the student must be set).

        Under torchrun (``cvpdl.ddp``) every rank passes the whole global batch in ``ddp.gathered`` order and embeds
        its own block of it (teacher and student); the teacher's region embeddings are gathered, so every rank
        pseudo-labels the whole batch (the keep-all fallback included), and the student's kept region and image
        embeddings are gathered with their gradient, so every rank computes the losses of the whole global batch,
        as one process does. ``student_forward``: the student's embedding call (DDP-wrapped by ``fit``)."""
        mine = _block(len(images))
        teacher_logits, labels, keep = self.pseudo_labels(ctx, images, captions, regions, concepts, concept_emb)
        first = sum(len(boxes) for boxes in regions[:mine.start])
        region_emb, global_emb = (student_forward or self.student_embeddings)(images[mine], regions[mine])
        region_emb = ddp.all_gather_with_grad(region_emb[keep[first:first + len(region_emb)]])
        return self.loss_terms(region_emb, ddp.all_gather_with_grad(global_emb), captions, teacher_logits, labels,
                               keep, concept_emb, caption_emb)

    @torch.no_grad()
    def pseudo_labels(self, ctx: OvdContext, images: np.ndarray, captions: list[str], regions: list[np.ndarray],
                      concepts: list[str], concept_emb: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's logits, labels and keep mask (``pseudo_label``) of every region of the global batch (each
        rank embeds its own block; the embeddings are gathered)."""
        mine, device = _block(len(images)), concept_emb.device
        teacher_emb = ddp.all_gather_rows(self._teacher_embeddings(ctx, images[mine], regions[mine]).to(device))
        allowed = self._allowed(captions, regions, concepts)
        return pseudo_label(teacher_emb, concept_emb, self.cfg.teacher_temperature, self.cfg.keep_threshold,
                            None if allowed is None else allowed.to(device))

    def loss_terms(self, kept_region_emb: torch.Tensor, global_emb: torch.Tensor, captions: list[str],
                   teacher_logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, concept_emb: torch.Tensor,
                   caption_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three losses, from the student's embeddings of the kept regions and of each whole image."""
        cfg = self.cfg
        scale = 1.0 / cfg.temperature
        same = (same_caption_mask(captions) if cfg.caption_duplicates == "positive"
                else torch.eye(len(captions), dtype=torch.bool)).to(global_emb.device)
        return {
            "loss_region": region_concept_contrastive(kept_region_emb, concept_emb, labels[keep], scale),
            "loss_image": image_text_contrastive(global_emb, caption_emb, scale, same),
            "loss_distill": distillation_kl(scale * kept_region_emb @ concept_emb.T, teacher_logits[keep]),
        }

    def student_embeddings(self, images: np.ndarray, regions: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's RoIAlign embeddings of ``regions`` and of a box over each whole image (one call, so that
        DDP wraps both)."""
        scale = self.cfg.image_scale
        return (embed_regions_roi(self.student, images, regions, scale, len(images)),
                embed_regions_roi(self.student, images, global_boxes(images), scale, len(images)))

    def init_student(self, ctx: OvdContext) -> list[torch.nn.Parameter]:
        """The student: a copy of the teacher whose visual encoder trains, except the stem and ``layer1``
        (official ``FREEZE_AT: 2``); every batch norm is frozen, statistics and affine scale and shift (official
        ``NORM: FrozenBN``). Returns the trained params."""
        teacher = ctx.clip
        self.student = ClipEncoder(copy.deepcopy(teacher.model), teacher.tokenizer.context_length)
        model = self.student.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        visual = model.visual
        frozen = {id(p) for module in (visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3,
                                       visual.layer1) for p in module.parameters()}
        frozen |= {id(p) for module in visual.modules() if isinstance(module, torch.nn.BatchNorm2d)
                   for p in module.parameters()}
        params = [p for p in visual.parameters() if id(p) not in frozen]
        for p in params:
            p.requires_grad_(True)
        return params

    def _corpus(self, ctx: OvdContext) -> _Corpus:
        n = min(self.cfg.images, len(ctx.train))
        captions = ctx.train.captions[:n]
        # a passed noun list is the pool as given (official); the class names only where the captions name them
        concepts = self.concept_vocabulary or concept_pool(captions, ctx.class_names)
        with torch.no_grad():
            concept_emb = ctx.clip.encode_text([prompt(c) for c in concepts])
            caption_emb = torch.cat([ctx.clip.encode_text(captions[i:i + 512]) for i in range(0, n, 512)])
        return _Corpus(np.stack([ctx.train.image(i) for i in range(n)]), captions, concepts, concept_emb, caption_emb)

    def _schedule(self, optimizer: torch.optim.Optimizer, n: int) -> torch.optim.lr_scheduler.LRScheduler:
        steps = max(1, n // self.cfg.batch_size)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.cfg.epochs * steps)

    def fit(self, ctx: OvdContext, generator: torch.Generator, checkpoint: Checkpoint | None = None,
            on_epoch: EpochCallback = no_report) -> dict[str, list[float]]:
        cfg = self.cfg
        corpus = self._corpus(ctx)
        n, images, captions = len(corpus.images), corpus.images, corpus.captions
        pool = self.proposal_pool(ctx, n, generator)
        params = self.init_student(ctx)
        model = self.student.model
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
        # the student trains in eval mode: every batch norm is frozen (official NORM: FrozenBN)
        loop = TrainLoop("RegionCLIP pretraining", model, optimizer, generator, n, cfg.batch_size, cfg.epochs,
                         step_scheduler=self._schedule(optimizer, n), clip_parameters=params,
                         clip_norm=cfg.grad_clip_norm, train_mode=False, weights=self._weights(),
                         checkpoint=checkpoint or Checkpoint(None, "regionclip"), on_epoch=on_epoch)
        student_forward = ddp.wrap(model, self.student_embeddings)  # DDP over the trained visual parameters

        def step_losses(batch: Batch) -> dict[str, torch.Tensor]:
            idx = batch.indices
            regions = sample_regions([pool[i] for i in idx], cfg.regions_per_image, generator)
            # every rank passes the global batch, in the order the ranks' shards are gathered (as is with one rank)
            positions = ddp.gathered(list(range(len(idx))))
            idx, regions = [idx[p] for p in positions], [regions[p] for p in positions]
            return self.losses(ctx, images[idx], [captions[i] for i in idx], regions, corpus.concepts,
                               corpus.concept_emb, corpus.caption_emb[idx], student_forward)

        history = loop.run(step_losses)["losses"]
        self._finish(ctx, corpus, pool, history)
        return history

    def _weights(self) -> dict[str, float]:
        cfg = self.cfg
        return {"loss_region": cfg.weight_region, "loss_image": cfg.weight_image, "loss_distill": cfg.weight_distill}

    def _finish(self, ctx: OvdContext, corpus: _Corpus, pool: list[np.ndarray], history: dict[str, list[float]]
                ) -> None:
        for p in self.student.model.parameters():
            p.requires_grad_(False)
        self.diagnostics = self.diagnose(ctx, corpus.images, corpus.captions, pool, corpus.concepts,
                                         corpus.concept_emb, history)

    @classmethod
    def fit_population(cls, methods: list[RegionClip], ctx: OvdContext, members: list[Member],
                       checkpoint: Checkpoint | None = None, on_epoch: EpochCallback = no_report
                       ) -> list[dict[str, list[float]] | NonFiniteLossError]:
        """``fit`` for a population: method i is member i's (its generator draws its batch order, its proposals
        where they are random, and its regions), the students' visual encoders trained as one batched model
        (``cvpdl.population``). The methods' configs may differ in ``MEMBER_FIELDS`` only (its lr in a param group
        of its own). Each member's step embeds its images once, the sampled regions and the whole-image box
        together, padded to the population's largest region count (RoIAlign runs member by member under ``vmap``:
        torchvision has no batching rule for it); its losses are ``loss_terms`` of its own config. One method goes
        through ``fit`` itself. Returns each member's history, or its error where its loss diverged."""
        if len(methods) == 1:
            return [methods[0].fit(ctx, members[0].generator, checkpoint, on_epoch)]
        first = methods[0]
        differing = {f.name for f in dataclasses.fields(first.cfg)
                     if len({getattr(m.cfg, f.name) for m in methods}) > 1}
        if bad := sorted(differing - set(MEMBER_FIELDS)):
            raise ValueError(f"RegionCLIP members may differ in {', '.join(MEMBER_FIELDS)} only, not in "
                             f"{', '.join(bad)}")
        cfg, corpus = first.cfg, first._corpus(ctx)
        n, images = len(corpus.images), corpus.images
        localizer_pools: dict[float, list[np.ndarray]] = {}  # the localizer's depend on the NMS threshold alone

        def pool_of(method: RegionClip, member: Member) -> list[np.ndarray]:
            if cfg.proposals == "random":  # each member's own draws
                return method.proposal_pool(ctx, n, member.generator)
            if method.cfg.proposal_nms not in localizer_pools:
                localizer_pools[method.cfg.proposal_nms] = method.proposal_pool(ctx, n, member.generator)
            return localizer_pools[method.cfg.proposal_nms]

        pools = [pool_of(m, member) for m, member in zip(methods, members)]
        for m in methods:
            m.init_student(ctx)
        population = Population([m.student.model.visual for m in methods], visual_region_embeddings)
        optimizer = recipe_optimizer(
            population, [SimpleNamespace(lr=m.cfg.lr, weight_decay=WEIGHT_DECAY) for m in methods],
            lambda named, recipe: [{"params": [v for _, v in named], "lr": recipe.lr, "weight_decay": WEIGHT_DECAY}],
            lambda groups: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=WEIGHT_DECAY))
        device = corpus.concept_emb.device
        weights = {name: torch.tensor([m._weights()[name] for m in methods], device=device)
                   for name in first._weights()}
        loop = PopulationLoop("RegionCLIP pretraining", population, optimizer, members, n, cfg.batch_size, cfg.epochs,
                              step_scheduler=first._schedule(optimizer, n), clip_norm=cfg.grad_clip_norm,
                              train_mode=False, weights=weights, checkpoint=checkpoint, on_epoch=on_epoch)
        size = int(round(ctx.clip.image_size * cfg.image_scale))
        factor = size / images.shape[1]

        def step_losses(batches: list[Batch]) -> dict[str, torch.Tensor]:
            steps = []
            for method, member, pool, batch in zip(methods, members, pools, batches):
                idx = batch.indices
                regions = sample_regions([pool[i] for i in idx], cfg.regions_per_image, member.generator)
                captions = [corpus.captions[i] for i in idx]
                labels = method.pseudo_labels(ctx, images[idx], captions, regions, corpus.concepts,
                                              corpus.concept_emb)
                steps.append((idx, captions, labels, _roi_rows(images[idx], regions, factor)))
            width = max(len(rois) for *_, rois in steps)
            rois = torch.stack([torch.cat([r, r[:1].expand(width - len(r), 5)]) for *_, r in steps]).to(device)
            pixels = torch.stack([ctx.clip.to_tensor(images[idx], size=size) for idx, *_ in steps])
            embeddings = population(pixels, rois)  # P × (images + regions, padded) × D
            terms = []
            for method, emb, (idx, captions, (logits, labels, keep), r) in zip(methods, embeddings, steps):
                count = len(idx)
                regions_emb = emb[count:len(r)]
                terms.append(method.loss_terms(regions_emb[keep], emb[:count], captions, logits, labels, keep,
                                               corpus.concept_emb, corpus.caption_emb[idx]))
            return {name: torch.stack([t[name] for t in terms]) for name in terms[0]}

        states = loop.run(step_losses, lambda index, *args: log_losses(*args),
                          [{"losses": {}} for _ in methods])
        results: list[dict[str, list[float]] | NonFiniteLossError] = []
        for index, (method, pool, state) in enumerate(zip(methods, pools, states)):
            if index in loop.diverged:
                results.append(loop.diverged[index])
                continue
            method._finish(ctx, corpus, pool, state["losses"])
            results.append(state["losses"])
        return results

    DIAGNOSTIC_IMAGES = 256

    @torch.no_grad()
    def diagnose(self, ctx: OvdContext, images: np.ndarray, captions: list[str], pool: list[np.ndarray],
                 concepts: list[str], concept_emb: torch.Tensor, history: dict[str, list[float]]) -> dict[str, float]:
        """What the pseudo-labels are worth, on regions drawn as pretraining draws them (the first
        ``DIAGNOSTIC_IMAGES`` images; a generator of its own, so training and evaluation draw as before):
        ``pseudo_label_accuracy`` (of the regions that overlap a ground-truth box at IoU ≥ 0.5, the share whose
        pseudo-label is that box's class), ``pseudo_label_kept`` (the share the confidence filter keeps),
        ``regions_on_objects`` (the share that overlap a box at all), ``student_teacher_agreement`` (the trained
        student's label, within the same allowed concepts, equals the teacher's on kept regions) beside
        ``agreement_chance`` (its chance level: one over each region's allowed concepts), and the last epoch's
        region–concept loss over ln K (K concepts: the loss of a uniform guess)."""
        from torchvision.ops import box_iou

        n = min(self.DIAGNOSTIC_IMAGES, len(images))
        regions = sample_regions(pool[:n], self.cfg.regions_per_image, torch.Generator().manual_seed(0))
        allowed = self._allowed(captions[:n], regions, concepts)
        teacher_emb = self._teacher_embeddings(ctx, images[:n], regions).to(self.student.device)
        allowed = None if allowed is None else allowed.to(self.student.device)
        _, labels, keep = pseudo_label(teacher_emb, concept_emb, self.cfg.teacher_temperature,
                                       self.cfg.keep_threshold, allowed)
        student_emb = self.student_embeddings(images[:n], regions)[0].to(self.student.device)
        _, student_labels, _ = pseudo_label(student_emb, concept_emb, self.cfg.temperature, 0.0, allowed)
        truth = []  # per region: the class name of the box it overlaps at IoU ≥ 0.5, or None
        for i, boxes in enumerate(regions):
            gt_boxes, gt_classes = ctx.train.target(i)
            if len(gt_boxes) == 0 or len(boxes) == 0:
                truth += [None] * len(boxes)
                continue
            iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(gt_boxes, dtype=torch.float32))
            best, which = iou.max(dim=1)
            truth += [ctx.class_names[int(gt_classes[j])] if b >= 0.5 else None for b, j in zip(best, which)]
        on_object = [k for k, name in enumerate(truth) if name is not None]
        choices = (torch.full((len(labels),), float(len(concepts))) if allowed is None else
                   (allowed | ~allowed.any(dim=1, keepdim=True)).sum(dim=1).float().cpu())
        return {
            "pseudo_label_accuracy": float(np.mean([concepts[int(labels[k])] == truth[k] for k in on_object]))
            if on_object else float("nan"),
            "pseudo_label_kept": float(keep.float().mean()),
            "regions_on_objects": len(on_object) / max(1, len(truth)),
            "student_teacher_agreement": float((student_labels == labels)[keep].float().mean()),
            "agreement_chance": float((1.0 / choices)[keep.cpu()].mean()),
            "region_loss_over_ln_k": history["loss_region"][-1] / float(np.log(len(concepts)))
            if history.get("loss_region") else float("nan"),
        }
