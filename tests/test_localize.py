"""Localisation: the scores mean what they say (hand-checked boxes, chance equal to a random pointer's hit rate), the
evaluate stage measures it on the dataset's boxes with the model's label names, gives the same bytes twice, and on
the phantom's planted boxes a trained model points far above chance while the same heatmaps against shuffled boxes
fall to it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cxrstudy.data.dataset import read_boxes
from cxrstudy.data.nihtable import read_bbox_list
from cxrstudy.errors import InputError
from cxrstudy.learning import boxscore, localize
from cxrstudy.params import Params
from cxrstudy.reporting.overlays import plot_overlays, read_heatmaps
from tests.conftest import ROOT, control_params, run_cli, tiny_params, workspace

# --------------------------------------------------------------------------------------------------------------------
# The scores, on heatmaps and boxes made by hand


def blob(size: int, centres: list[tuple[int, int]], radius: float = 3.0) -> np.ndarray:
    """A heatmap with a Gaussian bump at each (row, column)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * radius**2)) for r, c in centres).astype(np.float32)


def test_every_region_above_each_level_becomes_one_box() -> None:
    heatmap = blob(32, [(8, 8), (24, 20)])
    boxes = boxscore.predicted_boxes(heatmap, [0.5])
    assert len(boxes) == 2
    centres = sorted(((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes)
    assert centres == [(8.5, 8.5), (20.5, 24.5)]
    assert len(boxscore.predicted_boxes(heatmap, [0.5, 0.9])) == 4  # two levels, two regions each
    assert len(boxscore.predicted_boxes(np.zeros((16, 16), np.float32), [0.5])) == 0  # flat: no box


def test_iobb_is_overlap_over_the_predicted_box() -> None:
    truth = (10.0, 10.0, 20.0, 20.0)
    pred = np.array([[12, 12, 18, 18], [15, 10, 25, 20], [30, 30, 40, 40]], dtype=np.float64)
    assert boxscore.iobb(pred, truth).tolist() == [1.0, 0.5, 0.0]
    assert boxscore.localised(pred[1:2], truth, [0.25, 0.5, 0.75]).tolist() == [True, True, False]
    assert boxscore.localised(np.empty((0, 4)), truth, [0.1]).tolist() == [False]


def test_the_pointing_game_asks_whether_the_maximum_is_inside_the_box() -> None:
    heatmap = blob(32, [(5, 25)])
    assert boxscore.pointing_hit(heatmap, (20.0, 0.0, 32.0, 10.0))
    assert not boxscore.pointing_hit(heatmap, (0.0, 0.0, 10.0, 10.0))
    assert not boxscore.pointing_hit(np.zeros((32, 32), np.float32), (0.0, 0.0, 32.0, 32.0))  # flat: points nowhere


def test_a_maximal_plateau_points_at_its_centre_not_its_first_pixel() -> None:
    import torch
    import torch.nn.functional as F

    coarse = torch.tensor([[[[1.0, 0.2], [0.3, 0.1]]]])  # a 2 x 2 map, hottest at the top left
    fine = F.interpolate(coarse, size=(64, 64), mode="bilinear")[0, 0].numpy()
    assert (fine[:16, :16] == 1.0).all()  # flat from the cell's centre to the corner
    assert boxscore.peak(fine) == (8.0, 8.0)
    assert boxscore.pointing_hit(fine, (4.0, 4.0, 12.0, 12.0)) and not boxscore.pointing_hit(fine, (0.0, 0.0, 2.0, 2.0))


def test_pointing_chance_is_the_boxs_share_of_the_image() -> None:
    assert boxscore.pointing_chance((64, 64), (0.0, 0.0, 32.0, 32.0)) == 0.25
    assert boxscore.pointing_chance((64, 64), (0.0, 0.0, 64.0, 64.0)) == 1.0


def test_iobb_chance_is_the_hit_rate_of_the_same_boxes_placed_at_random() -> None:
    size, truth = 32, (4.0, 6.0, 14.0, 20.0)
    pred = np.array([[0, 0, 6, 4]], dtype=np.float64)  # a 6 x 4 box, wherever the heatmap put it
    thresholds = [0.1, 0.5, 1.0]
    rng = np.random.default_rng(0)
    hits = np.zeros(len(thresholds))
    draws = 20_000
    for _ in range(draws):
        x, y = rng.integers(0, size - 6 + 1), rng.integers(0, size - 4 + 1)
        hits += boxscore.localised(pred + [x, y, x, y], truth, thresholds)
    exact = boxscore.chance_localised(pred, truth, (size, size), thresholds)
    assert np.allclose(exact, hits / draws, atol=0.01)
    assert exact[0] >= exact[1] >= exact[2] > 0
    # a 1-pixel box placed at random is a random point: the box's share of the image
    point = boxscore.chance_localised(np.array([[0, 0, 1, 1]], float), (0.0, 0.0, 8.0, 16.0), (32, 32), [1.0])
    assert point[0] == pytest.approx(boxscore.pointing_chance((32, 32), (0.0, 0.0, 8.0, 16.0)))


def test_the_bootstrap_weights_boxes_by_their_patients_draws() -> None:
    values = np.array([[1.0], [0.0], [1.0], [1.0]])
    patient = np.array([0, 0, 1, 2])
    ones = np.ones((1, 3))
    assert boxscore.bootstrap_rates(ones, patient, values)[0, 0] == 0.75
    only_first = np.array([[3.0, 0.0, 0.0]])  # patient 0 drawn three times: its boxes, 1 and 0
    assert boxscore.bootstrap_rates(only_first, patient, values)[0, 0] == 0.5
    draws = boxscore.patient_draws(3, 500, seed=1)
    assert draws.shape == (500, 3) and (draws.sum(axis=1) == 3).all()
    low, high = boxscore.percentile_interval(boxscore.bootstrap_rates(draws, patient, values), 0.9)
    assert low[0] <= 0.75 <= high[0]


def test_shuffled_boxes_bring_a_perfect_localiser_down_to_chance() -> None:
    """Heatmaps that peak in the middle of their own image's box: every box is hit; against another image's box the
    same heatmaps hit about as often as a random point does (the negative control measures chance)."""
    rng = np.random.default_rng(3)
    n, size, side = 400, 64, 0.2
    corner = rng.uniform(0.0, 1.0 - side, (n, 2))
    boxes = pd.DataFrame({"image": [f"{i:04d}.png" for i in range(n)], "finding": "Mass", "x": corner[:, 0],
                          "y": corner[:, 1], "w": side, "h": side, "k": 0, "row": np.arange(n),
                          "patient": np.arange(n) // 2})
    maps = np.stack([blob(size, [(int((y + side / 2) * size), int((x + side / 2) * size))]) for x, y in corner])
    hits, chance, shuffled = localize.score(boxes, maps, np.arange(n), [0.235, 0.706], [0.1, 0.5], shuffle_seed=0)
    assert hits[:, 0].mean() == 1.0 and hits[:, 1].mean() == 1.0  # pointing, and IoBB >= 0.1
    assert chance[:, 0] == pytest.approx(np.full(n, (side * size) ** 2 / size**2), abs=0.01)
    assert np.isfinite(shuffled).all()
    assert abs(shuffled[:, 0].mean() - chance[:, 0].mean()) < 0.03  # ~2.5 standard errors at 400 boxes
    assert abs(shuffled[:, 1].mean() - chance[:, 1].mean()) < 0.06


# --------------------------------------------------------------------------------------------------------------------
# Boxes and label names as the stage reads them


def write_boxes(path: Path, rows: list[tuple[Any, ...]], extra: bool = True) -> Path:
    """NIH's BBox_List_2017.csv layout (its trailing empty columns with `extra`)."""
    header = "Image Index,Finding Label,Bbox [x,y,w,h]" + (",,," if extra else "")
    lines = [header] + [",".join(str(v) for v in row) + (",,," if extra else "") for row in rows]
    path.mkdir(parents=True, exist_ok=True)
    (path / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    return path / "BBox_List_2017.csv"


def test_nih_boxes_are_read_as_fractions_with_nih_spelling_fixed(tmp_path: Path) -> None:
    path = write_boxes(tmp_path, [("a.png", "Infiltrate", 512, 256, 102.4, 51.2), ("b.png", "Mass", 0, 0, 1024, 1024)])
    boxes = read_bbox_list(path)
    assert boxes["finding"].tolist() == ["Infiltration", "Mass"]
    assert boxes.loc[0, ["x", "y", "w", "h"]].tolist() == pytest.approx([0.5, 0.25, 0.1, 0.05])
    assert boxes.loc[1, ["w", "h"]].tolist() == [1.0, 1.0]


def test_nihs_own_box_file_reads_as_its_984_boxes_inside_the_image(tmp_path: Path) -> None:
    import gzip

    from cxrstudy.data.phantom import BBOX_FILE, resource_path

    (tmp_path / "BBox_List_2017.csv").write_bytes(gzip.decompress(resource_path(BBOX_FILE).read_bytes()))
    boxes = read_bbox_list(tmp_path / "BBox_List_2017.csv")
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert sorted(boxes["finding"].unique()) == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                                                 "Nodule", "Pneumonia", "Pneumothorax"]
    assert (boxes[["x", "y"]] >= 0).all().all() and ((boxes["x"] + boxes["w"]) <= 1.0001).all()


@pytest.mark.parametrize("row", [("a.png", "Mass", 10, 10, 0, 5), ("a.png", "Mass", "x", 10, 5, 5)])
def test_a_bad_box_is_named_by_its_line(tmp_path: Path, row: tuple[Any, ...]) -> None:
    path = write_boxes(tmp_path, [("ok.png", "Mass", 1, 1, 5, 5), row])
    with pytest.raises(InputError, match=r"BBox_List_2017.csv: line 3: .*positive w, h"):
        read_bbox_list(path)


def test_a_missing_box_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(InputError, match=r"boxes.csv: not found"):
        read_boxes(tmp_path)


def test_shuffled_boxes_never_stay_on_their_own_image() -> None:
    boxes = pd.DataFrame({"k": [0, 0, 0, 0, 1, 2, 2], "image": ["a", "b", "c", "a", "a", "b", "b"]})
    partner = localize.shuffled_partner(boxes, seed=0)
    for i, j in enumerate(partner[:4]):
        assert j in range(4) and boxes.at[j, "image"] != boxes.at[i, "image"]
    assert partner[4] == -1 and (partner[5:] == -1).all()  # one box, or one image: nothing to shuffle with


def test_the_heatmaps_file_has_fixed_bytes_and_loads_with_numpy(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["x", "yz"]), "s": np.array(3)}
    paths = [tmp_path / "one.npz", tmp_path / "two.npz"]
    for path in paths:
        with path.open("wb") as handle:
            localize.write_npz(handle, arrays)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with np.load(paths[0], allow_pickle=False) as z:
        assert z["names"].tolist() == ["x", "yz"] and z["a"].tolist() == arrays["a"].tolist() and int(z["s"]) == 3


# --------------------------------------------------------------------------------------------------------------------
# The stage, end to end on the tiny phantom


def localize_seed(params: Params, data: Path, out: Path, seed: int = 1, train_it: bool = True,
                  model: Path | None = None) -> dict[str, Any]:
    """Train (unless done, or `model` is given) and evaluate one seed on `data`, which localizes it too; the
    localisation metrics."""
    from cxrstudy.learning import evaluate, train

    raw, processed, splits = data / "data/raw", data / "data/processed", data / "data/splits"
    if model is None and train_it:
        train.run(params, seed, raw, processed, splits, out / "model", out / "history.csv", out / "ckpt")
    evaluate.run(params, seed, raw, processed, splits, model or out / "model", out / "eval.json", out / "pred.csv",
                 out / "val.csv", out / "loc.json", out / "heat.npz")
    return json.loads((out / "loc.json").read_text())


def test_the_same_model_gives_the_same_bytes_and_counts_every_test_box(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params(localize={"layer": "denseblock2", "figure_images": 1})
    first = localize_seed(params, tiny_data, tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in ("loc.json", "heat.npz")}
    second = localize_seed(params, tiny_data, tmp_path, train_it=False)
    assert first == second
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    test = set((tiny_data / "data/splits/test.txt").read_text().split())
    boxes = read_boxes(tiny_data / "data/raw")
    on_test = boxes[boxes["image"].isin(test)]
    assert first["pooled"]["boxes"] == len(on_test)
    assert {f: v["boxes"] for f, v in first["findings"].items()} == on_test["finding"].value_counts().to_dict()
    assert first["map_size"] == [4, 4] and first["image_size"] == 32  # denseblock2 of a 32-px input
    assert set(first["pooled"]["iobb"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"}
    heat = read_heatmaps(tmp_path / "heat.npz")
    assert heat.seed == 1 and len(heat.image) == len(first["findings"])  # one image per finding
    assert heat.pixels.shape[1:] == (32, 32) and heat.heatmap.dtype == np.uint8


def test_no_interval_from_too_few_patients(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params(localize={"layer": "denseblock2"}, report={"min_positives": 1000})
    metrics = localize_seed(params, tiny_data, tmp_path)
    for entry in [metrics["pooled"], *metrics["findings"].values()]:
        assert entry["interval"] is False
        assert entry["pointing"]["low"] is None and entry["pointing"]["hit"] is not None
    few = tiny_params(localize={"layer": "denseblock2"}, report={"min_positives": 1})
    pooled = localize_seed(few, tiny_data, tmp_path, train_it=False)["pooled"]
    assert pooled["interval"] is True
    assert pooled["pointing"]["low"] <= pooled["pointing"]["hit"] <= pooled["pointing"]["high"]


def test_evaluate_refuses_a_dataset_without_its_box_file_and_writes_nothing(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path / "ws")
    (ws / "models/seed_1").mkdir(parents=True)
    (ws / "data/raw/boxes.csv").unlink()
    done = run_cli(ws, "evaluate", "--seed", "1")
    assert done.returncode == 2, done.stderr
    assert "models/seed_1/model.pt: trained model not found" in done.stderr, done.stderr
    from cxrstudy.learning import train

    params = tiny_params()
    train.run(params, 1, ws / "data/raw", ws / "data/processed", ws / "data/splits", ws / "models/seed_1",
              ws / "plots/train/seed_1.csv", tmp_path / "ckpt")
    done = run_cli(ws, "evaluate", "--seed", "1")
    assert done.returncode == 2 and "data/raw/boxes.csv: not found" in done.stderr, done.stderr
    assert not (ws / "metrics").exists() and not (ws / "heatmaps").exists() and not (ws / "predictions").exists()


def test_a_dataset_without_boxes_says_so(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "data", data / "data")
    boxes = data / "data/raw/boxes.csv"
    boxes.write_text(boxes.read_text().splitlines()[0] + "\n")  # the header alone: a dataset with no boxes
    metrics = localize_seed(tiny_params(), data, tmp_path / "out")
    assert metrics["boxes"] == 0 and "no box" in metrics["reason"]
    with np.load(tmp_path / "out/heat.npz") as heat:
        assert list(heat.keys()) == []


def test_the_overlay_figure_has_fixed_bytes_and_refuses_mismatched_seeds(tiny_data: Path, tmp_path: Path) -> None:
    params = tiny_params(localize={"layer": "denseblock2", "figure_images": 1})
    localize_seed(params, tiny_data, tmp_path / "s1")
    localize_seed(params, tiny_data, tmp_path / "s2", seed=2)
    files = [tmp_path / "s2/heat.npz", tmp_path / "s1/heat.npz"]
    plot_overlays(files, tmp_path / "a.png", title="phantom")
    plot_overlays(files, tmp_path / "b.png", title="phantom")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tiny_params(localize={"layer": "denseblock2", "figure_images": 2})
    localize_seed(other, tiny_data, tmp_path / "s2", seed=2, train_it=False)
    with pytest.raises(InputError, match="images differ"):
        plot_overlays(files, tmp_path / "c.png")
    with pytest.raises(InputError, match="cannot read the localize heatmaps"):
        plot_overlays([tmp_path / "s1/loc.json"], tmp_path / "d.png")


@pytest.mark.slow
def test_the_benchmark_times_the_stages_and_sweeps_the_layers(tiny_data: Path, tmp_path: Path) -> None:
    from cxrstudy.learning import train

    project = workspace(tiny_data, tmp_path / "project", localize={"layer": "denseblock2"})
    params = tiny_params(localize={"layer": "denseblock2"})
    data = [project / "data/raw", project / "data/processed", project / "data/splits"]
    for seed in params.seeds:
        train.run(params, seed, *data, project / f"models/seed_{seed}", project / f"plots/train/seed_{seed}.csv",
                  tmp_path / "ckpt")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_localize.py"), "--project", str(project),
                           "--layers", "denseblock1,denseblock2", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Grad-CAM + bootstrap / (evaluate + report without them)" in done.stdout and f"wrote {out}" in done.stdout
    result = json.loads(out.read_text())
    costs = result["stage_costs"]
    assert set(costs["evaluate_s"]) == set(costs["gradcam_and_bootstrap_s"]) == {"1", "2"}
    assert costs["gradcam_and_bootstrap_share"] == pytest.approx(
        sum(costs["gradcam_and_bootstrap_s"].values()) / costs["without_localisation_s"])
    assert all(0 < costs["gradcam_and_bootstrap_s"][s] < costs["evaluate_s"][s] for s in ("1", "2"))
    assert [(r["layer"], r["seed"]) for r in result["layers"]] == [("denseblock1", 1), ("denseblock1", 2),
                                                                   ("denseblock2", 1), ("denseblock2", 2)]
    assert [r["map_size"] for r in result["layers"]][::2] == [[8, 8], [4, 4]]  # 32-px input
    assert [t["met"] in (True, False) for t in result["targets"]] == [True]


# --------------------------------------------------------------------------------------------------------------------
# The planted truth: the phantom draws each finding inside its box


# The controls' data and models are conftest's (shared with tests/test_train.py's controls); evaluated here with an
# interval from at least 10 positive patients, 1,000 resamples, at denseblock2.
LOCALIZE = {"report": {"min_positives": 10, "bootstrap": 1000}, "localize": {"layer": "denseblock2"}}


@pytest.mark.slow
def test_a_model_trained_on_shuffled_labels_points_no_better_than_chance(control_data: Path,
                                                                         shuffled_control_model: Path,
                                                                         tmp_path: Path) -> None:
    params = control_params(shuffled=True, **LOCALIZE)
    point = localize_seed(params, control_data, tmp_path, model=shuffled_control_model)["pooled"]["pointing"]
    # no evidence above chance: the interval of hit - chance reaches down to 0
    assert point["excess_low"] <= 0, point


@pytest.mark.slow
def test_a_trained_model_points_inside_the_planted_boxes_and_shuffled_boxes_fall_to_chance(
        control_data: Path, control_model: Path, tmp_path: Path) -> None:
    pooled = localize_seed(control_params(**LOCALIZE), control_data, tmp_path, model=control_model)["pooled"]
    point = pooled["pointing"]
    assert pooled["interval"] and pooled["patients"] >= 10
    # above a random point beyond test-sampling noise: the whole interval of hit - chance above 0
    assert point["excess_low"] > 0, point
    # the same heatmaps against another image's box of the same finding hit less often
    assert point["hit"] > point["shuffled"], point
