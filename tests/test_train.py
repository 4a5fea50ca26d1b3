"""Training: the same seed on the same machine gives the same numbers; labels really drive learning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cxrstudy.data import ingest, preprocess, split
from cxrstudy.learning import evaluate, train
from cxrstudy.params import Params
from tests.conftest import tiny_params


def run_seed(params: Params, data: Path, out: Path, seed: int = 1) -> dict[str, object]:
    """Train and evaluate one seed on `data`, writing under `out`; return the metrics."""
    raw, processed, splits = data / "data/raw", data / "data/processed", data / "data/splits"
    train.run(params, seed, raw, processed, splits, out / "model", out / "history.csv", out / "ckpt")
    evaluate.run(params, seed, raw, processed, splits, out / "model", out / "metrics.json", out / "pred.csv")
    return json.loads((out / "metrics.json").read_text())


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model" / "model.pt", weights_only=True)["model"]


def test_the_same_seed_gives_identical_weights_and_metrics(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params()
    a = run_seed(params, tiny_data, tmp_path / "a")
    b = run_seed(params, tiny_data, tmp_path / "b")
    assert a == b
    sa, sb = state(tmp_path / "a"), state(tmp_path / "b")
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a/history.csv").read_text() == (tmp_path / "b/history.csv").read_text()
    assert (tmp_path / "a/pred.csv").read_bytes() == (tmp_path / "b/pred.csv").read_bytes()


def test_another_seed_gives_other_weights(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params()
    run_seed(params, tiny_data, tmp_path / "a", seed=1)
    run_seed(params, tiny_data, tmp_path / "b", seed=2)
    sa, sb = state(tmp_path / "a"), state(tmp_path / "b")
    assert not torch.equal(sa["net.classifier.weight"], sb["net.classifier.weight"])


def test_training_writes_one_history_row_per_epoch_and_removes_its_checkpoint(tiny_data: Path,
                                                                               tmp_path: Path) -> None:
    params = tiny_params()
    metrics = run_seed(params, tiny_data, tmp_path)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    summary = json.loads((tmp_path / "model/summary.json").read_text())
    assert summary["best_val_auroc"] == max(round(float(r["val_auroc"]), 6) for r in rows)
    assert not (tmp_path / "ckpt/last.pt").exists()
    assert metrics["n_test"] > 0 and 0.0 <= metrics["auroc_mean"] <= 1.0  # type: ignore[operator]


@pytest.fixture(scope="module")
def control_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Params]:
    """A small but learnable phantom, for the positive and negative controls."""
    root = tmp_path_factory.mktemp("control")
    params = tiny_params(ingest={"phantom": {"n_images": 600, "image_size": 128}},
                         preprocess={"image_size": 64},
                         train={"image_size": 64, "epochs": 5, "batch_size": 16, "lr": 0.002},
                         numerics={"threads": 2})
    ingest.run(params, root / "data/raw", workers=2)
    preprocess.run(params, root / "data/raw", root / "data/processed")
    split.run(params, root / "data/raw", root / "data/splits")
    return root, params


@pytest.mark.slow
def test_positive_control_learns_the_phantom(control_data: tuple[Path, Params], tmp_path: Path) -> None:
    data, params = control_data
    metrics = run_seed(params, data, tmp_path)
    assert metrics["auroc_mean"] > 0.62  # type: ignore[operator]


@pytest.mark.slow
def test_negative_control_on_shuffled_labels_stays_near_chance(control_data: tuple[Path, Params],
                                                              tmp_path: Path) -> None:
    data, params = control_data
    shuffled = params.model_copy(update={"train": params.train.model_copy(update={"shuffle_labels": True})})
    metrics = run_seed(shuffled, data, tmp_path)
    assert abs(metrics["auroc_mean"] - 0.5) < 0.08  # type: ignore[operator]


def test_cli_refuses_a_seed_not_in_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxrstudy.cli import main
    from tests.conftest import tiny_raw, write_params

    params = write_params(tmp_path / "params.yaml", tiny_raw())
    assert main(["--params", str(params), "train", "--seed", "99", "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "--seed 99" in err and "not in params.yaml seeds [1, 2]" in err and "add it there first" in err, err
    assert not (tmp_path / "model").exists()


