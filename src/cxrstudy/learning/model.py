"""The model: torchvision's DenseNet-121 with a one-channel stem and a 14-way head."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from cxrstudy.errors import InputError

# ImageNet statistics, reduced to one grey channel (the mean over RGB), used with pretrained weights.
GREY_MEAN = 0.449
GREY_STD = 0.226


class ChestDenseNet(nn.Module):
    """DenseNet-121 on one-channel images in [0, 1]; returns one logit per finding."""

    def __init__(self, num_classes: int = 14, pretrained: bool = False) -> None:
        super().__init__()
        weights = DenseNet121_Weights.IMAGENET1K_V1 if pretrained else None
        try:
            net = densenet121(weights=weights)
        except Exception as err:  # no network, no cached file: say what to do
            raise InputError(
                "train.pretrained: ImageNet weights for DenseNet-121 are not available "
                f"({type(err).__name__}: {err}). Put {DenseNet121_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} "
                "into $TORCH_HOME/hub/checkpoints/ or set train.pretrained: false"
            ) from None
        stem = net.features.conv0
        grey = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        if pretrained:
            with torch.no_grad():
                # Summing the RGB filters equals feeding the grey image on all three channels.
                grey.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(grey.weight)  # as torchvision initialises its own convolutions
        net.features.conv0 = grey
        net.classifier = nn.Linear(net.classifier.in_features, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - GREY_MEAN) / GREY_STD)


def build_model(num_classes: int = 14, pretrained: bool = False) -> ChestDenseNet:
    return ChestDenseNet(num_classes, pretrained)
