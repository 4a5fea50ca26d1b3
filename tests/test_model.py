"""The model contract: one-channel images in, one finite logit per label out; pretrained weights fail clearly
offline; a trained model's file carries its label names and as many outputs as it was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrstudy.errors import InputError
from cxrstudy.learning.model import build_model
from cxrstudy.learning.predict import load_trained, model_labels, read_trained


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


def test_a_trained_model_file_gives_back_its_labels_and_its_outputs(tmp_path: Path) -> None:
    labels = ["Cardiomegaly", "Edema", "Pleural Effusion"]
    torch.manual_seed(0)
    model = build_model(len(labels)).eval()
    torch.save({"model": model.state_dict(), "seed": 1, "labels": labels}, tmp_path / "model.pt")
    payload = read_trained(tmp_path / "model.pt")
    assert model_labels(payload) == tuple(labels)
    loaded = load_trained(tmp_path / "model.pt").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # three outputs, the same weights


def test_a_model_file_without_label_names_or_at_all_is_named(tmp_path: Path) -> None:
    torch.save({"model": build_model(14).state_dict()}, tmp_path / "old.pt")
    with pytest.raises(InputError, match="records no label names: it was trained by an older version; re-run"):
        model_labels(read_trained(tmp_path / "old.pt"))
    with pytest.raises(InputError, match=r"nope\.pt: trained model not found; run the train stage"):
        read_trained(tmp_path / "nope.pt")
