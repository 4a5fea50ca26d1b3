"""The model contract: one-channel images in, 14 finite logits out; pretrained weights fail clearly offline."""

from __future__ import annotations

import pytest
import torch

from cxrstudy.errors import InputError
from cxrstudy.learning.model import build_model


def test_one_channel_images_in_fourteen_finite_logits_out() -> None:
    torch.manual_seed(0)
    model = build_model(14).eval()
    with torch.no_grad():
        out = model(torch.ones(2, 1, 64, 64))
    assert out.shape == (2, 14)
    assert torch.isfinite(out).all()


def test_it_is_torchvisions_densenet121() -> None:
    model = build_model(14)
    n = sum(p.numel() for p in model.parameters())
    # torchvision's DenseNet-121 has 7,978,856 parameters; a grey stem removes 2 x 64*7*7 and the
    # 14-way head replaces the 1000-way one.
    assert n == 7_978_856 - 2 * 64 * 49 - (1024 * 1000 + 1000) + (1024 * 14 + 14)


def test_unavailable_imagenet_weights_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InputError, match=r"train\.pretrained: ImageNet weights .* not available .*densenet121-"):
        build_model(14, pretrained=True)
