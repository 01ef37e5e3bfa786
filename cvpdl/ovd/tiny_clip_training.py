"""Contrastive training of the tiny CLIP on an image–caption corpus (the digits world's canvases)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig
from cvpdl.ovd.losses import image_text_contrastive, same_caption_mask


def train_clip(encoder: ClipEncoder, images: np.ndarray, captions: list[str], cfg: TinyClipConfig,
               generator: torch.Generator) -> list[float]:
    """Train ``encoder.model`` in place; returns the mean loss of each epoch.

    Duplicate captions in a batch are positives, not negatives (``same_caption_mask``), and the learning rate
    follows a one-cycle schedule: without warm-up the tiny model stays at chance.
    """
    model = encoder.model
    model.train()
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                   pct_start=cfg.warmup_frac)
    tokens = encoder.tokenizer(captions)
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="train CLIP", unit="epoch", leave=False):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            pixels = encoder.to_tensor(images[idx.numpy()])
            image_emb = encoder.encode_image(pixels)
            text_emb = torch.nn.functional.normalize(model.encode_text(tokens[idx].to(encoder.device)), dim=-1)
            same = same_caption_mask([captions[i] for i in idx.tolist()]).to(encoder.device)
            loss = image_text_contrastive(image_emb, text_emb, model.logit_scale.exp(), same)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    model.eval()
    return history
