"""A small CNN backbone (stride 8) shared by every DETR variant of a comparison."""
from torch import nn

STRIDE = 8  # three stride-2 convolutions


def build_backbone(width: int, d_model: int) -> nn.Sequential:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, width, 2), *block(width, width, 1), *block(width, 2 * width, 2),
                         *block(2 * width, 2 * width, 1), *block(2 * width, 4 * width, 2),
                         nn.Conv2d(4 * width, d_model, 1))
