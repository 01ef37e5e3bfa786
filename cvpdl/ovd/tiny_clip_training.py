"""Contrastive training of the tiny CLIP on an image–caption corpus (the digits world's canvases)."""
from __future__ import annotations

import numpy as np
import open_clip
import torch
from PIL import Image

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.engine import Batch, TrainLoop
from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig
from cvpdl.ovd.losses import image_text_contrastive, same_caption_mask
from cvpdl.progress import EpochCallback, no_report


def train_clip(encoder: ClipEncoder, images: np.ndarray, captions: list[str], cfg: TinyClipConfig,
               generator: torch.Generator, on_epoch: EpochCallback = no_report, checkpoint: Checkpoint | None = None
               ) -> list[float]:
    """Train ``encoder.model`` in place; returns the mean loss of each epoch. With a ``checkpoint`` a rerun
    resumes from the last finished epoch.

    Duplicate captions in a batch are positives, not negatives (``same_caption_mask``), and the learning rate
    follows a one-cycle schedule: without warm-up the tiny model stays at chance. With ``cfg.augment`` every image
    goes through open_clip's own training transform (RandomResizedCrop with ``cfg.augment_scale``, bicubic).

    Under torchrun (``cvpdl.ddp``) each rank embeds its shard of every global batch (DDP over the model) and the
    embeddings of all ranks are gathered with their gradient, so every rank computes the contrastive loss of the
    whole global batch, as open_clip's ``ClipLoss(gather_with_grad=True)``; each rank augments its shard from its
    own seed (the step's seed + rank), and batch-norm statistics are each shard's (no SyncBatchNorm).
    """
    model = encoder.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(images) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                   pct_start=cfg.warmup_frac)

    def clamp_logit_scale() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    loop = TrainLoop("train CLIP", model, optimizer, generator, len(images), cfg.batch_size, cfg.epochs,
                     step_scheduler=schedule, after_step=clamp_logit_scale, checkpoint=checkpoint, on_epoch=on_epoch)
    tokens = encoder.tokenizer(captions)
    augment = open_clip.image_transform(encoder.image_size, is_train=True, mean=encoder.mean.flatten().tolist(),
                                        std=encoder.std.flatten().tolist(),
                                        aug_cfg=open_clip.AugmentationCfg(scale=tuple(cfg.augment_scale)))
    rank = ddp.rank_world()[0]

    def embed(pixels: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (encoder.encode_image(pixels), torch.nn.functional.normalize(model.encode_text(text), dim=-1),
                model.logit_scale.exp())

    forward = ddp.wrap(model, embed)

    def step_losses(batch: Batch) -> dict[str, torch.Tensor]:
        idx = batch.mine
        pixels = (augmented(augment, images[idx], generator, offset=rank).to(encoder.device)
                  if cfg.augment else encoder.to_tensor(images[idx]))
        image_emb, text_emb, logit_scale = forward(pixels, tokens[idx].to(encoder.device))
        image_emb, text_emb = ddp.all_gather_with_grad(image_emb), ddp.all_gather_with_grad(text_emb)
        same = same_caption_mask([captions[i] for i in ddp.gathered(batch.indices)]).to(encoder.device)
        return {"loss": image_text_contrastive(image_emb, text_emb, logit_scale, same)}

    history = loop.run(step_losses)["losses"].get("loss", [])
    model.eval()
    return history


def augmented(transform, images: np.ndarray, generator: torch.Generator, offset: int = 0) -> torch.Tensor:
    """``transform`` (a torchvision/open_clip PIL pipeline) applied to each uint8 HWC image; its random draws come
    from torch's global RNG, seeded here from ``generator`` (plus ``offset``: a DDP rank's own stream) so that
    training stays reproducible."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + offset)
        return torch.stack([transform(Image.fromarray(image)) for image in images])
