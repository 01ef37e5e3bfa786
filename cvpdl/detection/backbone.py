"""A small CNN backbone (stride 8) shared by every DETR variant of a comparison, with frozen batch norm.

Official DETR (facebookresearch/detr ``models/backbone.py``) builds its ResNet with ``FrozenBatchNorm2d``: the
ImageNet statistics and affine parameters are fixed, whatever the backbone learning rate; DAB-DETR and DN-DETR
keep it. The 1×1 projection to the transformer width is the detector's own ``input_proj`` (``detr.py``), not
part of the backbone.
"""
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

STRIDE = 8  # three stride-2 convolutions


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → the backbone's input: float (B, 3, H, W), centred at 0.5, scaled by 1 / 0.25."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def body_channels(width: int) -> int:
    """Channels of the backbone's output feature map."""
    return 4 * width


def build_body(width: int, frozen_norm: bool = True) -> nn.Sequential:
    """The convolutions: ``frozen_norm`` (detection, official) or trainable batch norm (pretraining, as the ImageNet
    classifier the official backbone comes from was trained). Both hold the same state-dict keys."""
    norm = FrozenBatchNorm2d if frozen_norm else nn.BatchNorm2d

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, width, 2), *block(width, width, 1), *block(width, 2 * width, 2),
                         *block(2 * width, 2 * width, 1), *block(2 * width, body_channels(width), 2))
