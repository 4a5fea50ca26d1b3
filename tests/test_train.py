"""Training: the same seed on the same machine gives the same numbers; labels really drive learning; the model carries
the dataset's label names, evaluation refuses a model trained on other labels, and the external stage tests a model
of site A at site B on the findings both label spaces share."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrstudy.data import ingest, preprocess
from cxrstudy.data.dataset import read_info, read_table
from cxrstudy.errors import InputError
from cxrstudy.learning import evaluate, external, train
from cxrstudy.metrics import per_class_auroc
from cxrstudy.params import Params
from tests.conftest import control_params, tiny_params


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


def test_the_model_and_its_predictions_carry_the_datasets_label_names(tiny_data: Path, tmp_path: Path) -> None:
    labels = read_info(tiny_data / "data/raw").labels
    metrics = run_seed(tiny_params(train={"epochs": 1}), tiny_data, tmp_path)
    assert torch.load(tmp_path / "model/model.pt", weights_only=True)["labels"] == list(labels)
    assert list(metrics["auroc"]) == list(labels)  # type: ignore[call-overload]
    header = (tmp_path / "pred.csv").read_text().splitlines()[0].split(",")
    assert header == ["image", "patient", *(f"label_{n}" for n in labels), *(f"prob_{n}" for n in labels)]
    # a model trained on another label space is refused by name, not evaluated with the wrong columns
    payload = torch.load(tmp_path / "model/model.pt", weights_only=True)
    torch.save({**payload, "labels": [*labels[1:], labels[0]]}, tmp_path / "model/model.pt")
    with pytest.raises(InputError, match=r"model\.pt: predicts \['Cardiomegaly', .* but the dataset's labels are "
                                         r"\['Atelectasis', .*re-run the train stage"):
        evaluate.run(tiny_params(), 1, tiny_data / "data/raw", tiny_data / "data/processed",
                     tiny_data / "data/splits", tmp_path / "model", tmp_path / "m2.json", tmp_path / "p2.csv")
    assert not (tmp_path / "m2.json").exists() and not (tmp_path / "p2.csv").exists()


def test_the_model_file_is_the_same_wherever_the_data_lies(tiny_data: Path, tmp_path: Path) -> None:
    """Two checkouts of one commit hold the same data in other files (other inodes, other times): the model file, a
    DVC output whose hash dvc.lock records, must not differ between them."""
    params = tiny_params(train={"epochs": 1})
    models = []
    for where in ("a", "b"):
        shutil.copytree(tiny_data / "data", tmp_path / where / "data")
        data = tmp_path / where / "data"
        train.run(params, 1, data / "raw", data / "processed", data / "splits", tmp_path / where / "model",
                  tmp_path / where / "history.csv", tmp_path / where / "ckpt")
        models.append(torch.load(tmp_path / where / "model/model.pt", weights_only=True))
    a, b = models
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items() if k != "model"}


# NIH's findings that CheXpert also labels (resources/label_map.csv), by their name in each.
SHARED = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
          "Edema": "Edema", "Effusion": "Pleural Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax"}


def test_a_model_of_site_a_is_tested_at_site_b_on_the_shared_findings(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("cxrstudy.data.sources.chexpert_phantom", reason="site B is not in this version")
    params = tiny_params(ingest={"external": "chexpert_phantom",
                                 "chexpert_phantom": {"n_images": 60, "image_size": 64}}, train={"epochs": 1})
    site_b = tmp_path / "external"
    ingest.run(params, "external", site_b / "raw", workers=1)
    preprocess.run(params, site_b / "raw", site_b / "processed")
    data = tiny_data / "data"
    train.run(params, 1, data / "raw", data / "processed", data / "splits", tmp_path / "model",
              tmp_path / "history.csv", tmp_path / "ckpt")
    external.run(params, 1, data / "raw", site_b / "raw", site_b / "processed", tmp_path / "model",
                 tmp_path / "external.json", tmp_path / "external.csv")
    result = json.loads((tmp_path / "external.json").read_text())["external"]
    info, table = read_info(site_b / "raw"), read_table(site_b / "raw")
    assert (result["source"], result["uncertain"]) == ("chexpert_phantom", info.uncertain) == ("chexpert_phantom",
                                                                                             "ignore")
    assert result["findings"] == SHARED  # the model's names -> site B's, from the label map
    assert result["n_test"] == len(table) and result["test_patients"] == table["patient"].nunique()
    for ours, theirs in SHARED.items():  # site B's own labels: positives counted, uncertain ones masked
        assert result["test_positives"][ours] == int((table[theirs] == "1").sum())
        assert result["masked"][ours] == int((table[theirs] == "-1").sum())
    predictions = pd.read_csv(tmp_path / "external.csv", dtype={"patient": str})
    assert list(predictions.columns) == ["image", "patient", *(f"label_{n}" for n in SHARED),
                                         *(f"prob_{n}" for n in SHARED)]
    assert predictions["image"].tolist() == table["image"].tolist()
    labels = predictions[[f"label_{n}" for n in SHARED]].to_numpy(np.float32)  # a masked cell is empty: NaN
    assert int(np.isnan(labels).sum()) == sum(result["masked"].values())
    auroc = per_class_auroc(labels, predictions[[f"prob_{n}" for n in SHARED]].to_numpy(np.float32))
    assert result["auroc"] == {n: None if np.isnan(v) else pytest.approx(v, abs=1e-6)
                               for n, v in zip(SHARED, auroc, strict=True)}


def test_without_an_external_site_the_stage_says_so(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params()  # ingest.external: none
    ingest.run(params, "external", tmp_path / "external/raw")
    external.run(params, 1, tiny_data / "data/raw", tmp_path / "external/raw", tmp_path / "external/processed",
                 tmp_path / "no-model", tmp_path / "external.json", tmp_path / "external.csv")
    assert json.loads((tmp_path / "external.json").read_text()) == {
        "seed": 1, "external": None, "reason": "no external test set (ingest.external: none)"}
    assert (tmp_path / "external.csv").read_text() == "image,patient\n"


def evaluate_control(data: Path, model: Path, out: Path) -> dict[str, object]:
    """Evaluate a control model (conftest's `control_model`, `shuffled_control_model`) on the controls' data."""
    raw, processed, splits = data / "data/raw", data / "data/processed", data / "data/splits"
    evaluate.run(control_params(), 1, raw, processed, splits, model, out / "metrics.json", out / "pred.csv")
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_positive_control_learns_the_phantom(control_data: Path, control_model: Path, tmp_path: Path) -> None:
    metrics = evaluate_control(control_data, control_model, tmp_path)
    assert metrics["auroc_mean"] > 0.62  # type: ignore[operator]


@pytest.mark.slow
def test_negative_control_on_shuffled_labels_stays_near_chance(control_data: Path, shuffled_control_model: Path,
                                                              tmp_path: Path) -> None:
    metrics = evaluate_control(control_data, shuffled_control_model, tmp_path)
    assert abs(metrics["auroc_mean"] - 0.5) < 0.08  # type: ignore[operator]


def test_cli_refuses_a_seed_not_in_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxrstudy.cli import main
    from tests.conftest import tiny_raw, write_params

    params = write_params(tmp_path / "params.yaml", tiny_raw())
    assert main(["--params", str(params), "train", "--seed", "99", "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "--seed 99" in err and "not in params.yaml seeds [1, 2]" in err and "add it there first" in err, err
    assert not (tmp_path / "model").exists()


