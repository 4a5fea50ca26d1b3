"""The report's figures: the tables they are drawn from (also DVC plots data) and byte-deterministic PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrstudy.data.preprocess import process_image
from cxrstudy.data.shards import load_processed
from cxrstudy.reporting import figures, plotdata
from tests.conftest import tiny_params
from tests.synthetic import NIH_NAMES as FINDINGS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _curves(seeds: int = 2, n: int = 200, empty: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = (rng.random((n, len(FINDINGS))) < 0.15).astype(np.float32)
    if empty is not None:
        labels[:, empty] = 0
    out = {}
    for s in range(seeds):
        probs = 1 / (1 + np.exp(-(labels * 1.5 + rng.normal(0, 1, labels.shape))))
        out[figures.model_name(s)] = (labels, probs)
    return out


def _history() -> pd.DataFrame:
    frames = {seed: pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.3, 0.2, 0.1 + seed / 100],
                                  "val_loss": [0.35, 0.3, 0.28], "val_auroc": [0.6, 0.65, 0.7], "lr": 1e-3})
              for seed in (1, 2)}
    return plotdata.history_table(frames)


def test_roc_table_has_a_fixed_grid_per_finding_and_model() -> None:
    table = plotdata.roc_table(_curves(), FINDINGS)
    assert list(table.columns) == ["finding", "model", "point", "fpr", "tpr"]
    assert len(table) == len(FINDINGS) * 2 * plotdata.ROC_POINTS
    for _, curve in table.groupby(["finding", "model"]):
        assert curve["fpr"].tolist() == pytest.approx(np.linspace(0, 1, plotdata.ROC_POINTS).tolist())
        assert (np.diff(curve["tpr"]) >= 0).all()
        assert curve["tpr"].iloc[-1] == 1.0


def test_roc_table_area_is_close_to_the_auroc() -> None:
    curves = _curves()
    table = plotdata.roc_table(curves, FINDINGS)
    labels, probs = curves["seed 0"]
    for k, name in enumerate(FINDINGS[:4]):
        tpr = table[(table["finding"] == name) & (table["model"] == "seed 0")]["tpr"].to_numpy()
        area = float(np.sum(tpr[:-1]) / (plotdata.ROC_POINTS - 1))  # the step curve, read from the left
        assert area == pytest.approx(roc_auc_score(labels[:, k], probs[:, k]), abs=0.03)


def test_a_finding_without_positives_has_no_roc_rows() -> None:
    table = plotdata.roc_table(_curves(empty=7), FINDINGS)
    assert FINDINGS[7] not in set(table["finding"])
    assert len(set(table["finding"])) == len(FINDINGS) - 1


def test_auroc_table_leaves_undefined_values_out() -> None:
    table = plotdata.auroc_table({"seed 1": {"Mass": 0.8, "Hernia": float("nan")}, "ensemble": {"Mass": 0.85}})
    assert table.to_dict("records") == [{"finding": "Mass", "model": "seed 1", "auroc": 0.8},
                                        {"finding": "Mass", "model": "ensemble", "auroc": 0.85}]


def test_history_table_stacks_seeds_with_a_seed_column() -> None:
    table = _history()
    assert list(table.columns) == ["seed", "epoch", "train_loss", "val_loss", "val_auroc", "lr"]
    assert table["seed"].tolist() == [1, 1, 1, 2, 2, 2]


def test_plots_csv_is_plain_and_stable(tmp_path: Path) -> None:
    plotdata.write_csv(tmp_path / "train.csv", _history())
    text = (tmp_path / "train.csv").read_text()
    assert text.splitlines()[0] == "seed,epoch,train_loss,val_loss,val_auroc,lr"
    assert "\r" not in text and text.endswith("\n")


def _draw_all(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    curves = _curves()
    roc = plotdata.roc_table(curves, FINDINGS)
    figures.plot_roc(roc, FINDINGS, dict.fromkeys(FINDINGS, 0.75), folder / figures.ROC_PNG)
    dots = plotdata.auroc_table({m: dict.fromkeys(FINDINGS, 0.7 + 0.01 * i) for i, m in enumerate(curves)})
    refs = [figures.Reference("CheXNet [random 70/10/20]", dict.fromkeys(FINDINGS, 0.8), "D")]
    figures.plot_auroc_dots(dots, FINDINGS, refs, folder / figures.AUROC_PNG)
    figures.plot_training_curves(_history(), folder / figures.TRAIN_PNG)
    image = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    sample = figures.ClaheSample("00000001_000.png", image, image[::-1].copy())
    figures.plot_clahe([sample, sample], "raw", "processed", folder / figures.CLAHE_PNG)
    figures.plot_reliability(plotdata.reliability_table(curves, 10), folder / figures.RELIABILITY_PNG, "reliability")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _draw_all(tmp_path_factory.mktemp("figures"))


def test_every_figure_is_a_png_drawn_twice_to_the_same_bytes(drawn: dict[str, bytes], tmp_path: Path) -> None:
    again = _draw_all(tmp_path)
    assert set(drawn) == {figures.ROC_PNG, figures.AUROC_PNG, figures.TRAIN_PNG, figures.CLAHE_PNG,
                          figures.RELIABILITY_PNG}
    for name, data in drawn.items():
        assert data.startswith(PNG_SIGNATURE), name
        assert data == again[name], f"{name} differs between two renderings"


def test_pngs_carry_no_software_or_time_metadata(drawn: dict[str, bytes]) -> None:
    for name, data in drawn.items():
        assert b"Software" not in data and b"tIME" not in data, name


def test_a_users_matplotlib_settings_do_not_change_the_bytes(drawn: dict[str, bytes], tmp_path: Path) -> None:
    plain = drawn
    with mpl.rc_context({"lines.linewidth": 4.0, "font.size": 20, "figure.dpi": 300, "axes.facecolor": "yellow"}):
        styled = _draw_all(tmp_path / "styled")
    assert plain == styled


def test_different_data_draw_different_bytes(tmp_path: Path) -> None:
    history = _history()
    figures.plot_training_curves(history, tmp_path / "a.png")
    history.loc[0, "train_loss"] = 0.9
    figures.plot_training_curves(history, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_clahe_samples_show_the_raw_image_resized_and_the_processed_one(tiny_data: Path) -> None:
    params = tiny_params()
    raw, processed = tiny_data / "data/raw", tiny_data / "data/processed"
    samples, before_label, after_label = figures.clahe_samples(params, raw, processed, None)
    images = load_processed(processed)
    names = images.names
    assert len(samples) == params.report.clahe_samples
    assert [s.name for s in samples] == sorted(s.name for s in samples)
    from cxrstudy.data.imageio import read_raw_image

    plain = params.preprocess.model_copy(update={"clahe": False})
    for sample in samples:
        np.testing.assert_array_equal(sample.after, images[names.index(sample.name)])
        np.testing.assert_array_equal(sample.before, process_image(read_raw_image(raw, sample.name), plain))
    assert "CLAHE (clip 2.0, 8×8 tiles)" in after_label and "raw" in before_label


def test_reliability_table_pools_findings_into_equal_width_bins() -> None:
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=float)
    probs = np.array([[0.05, 0.15], [0.08, 0.95], [0.92, 0.97], [0.11, 0.5]])
    table = plotdata.reliability_table({"seed 1": (labels, probs)}, 10)
    rows = table.set_index("bin")
    assert rows.loc[0, "count"] == 2 and rows.loc[0, "frequency"] == 0.5
    assert rows.loc[0, "mean_prob"] == pytest.approx(0.065)
    assert rows.loc[9, "count"] == 3 and rows.loc[9, "frequency"] == pytest.approx(2 / 3)
    assert set(rows.index) == {0, 1, 5, 9} and int(table["count"].sum()) == labels.size


def _figures_run(tiny_data: Path, tmp_path: Path, source: str) -> tuple[str, Path]:
    from tests.synthetic import make_study

    names = load_processed(tiny_data / "data/processed").names
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=50, n_test=60, n_patients=40, names=names,
                       ingest={"source": source})
    text = study.run(tmp_path / "reports/report.md", history_dir=study.history, raw_dir=tiny_data / "data/raw",
                     processed_dir=tiny_data / "data/processed", figures_dir=tmp_path / "reports/figures",
                     plots_dir=tmp_path / "plots/report")
    return text, tmp_path


def test_report_links_every_figure_and_writes_the_plots_data(tiny_data: Path, tmp_path: Path) -> None:
    text, root = _figures_run(tiny_data, tmp_path, "phantom")
    for png in (figures.ROC_PNG, figures.AUROC_PNG, figures.CLAHE_PNG, figures.TRAIN_PNG, figures.RELIABILITY_PNG):
        assert f"](figures/{png})" in text
        assert (root / "reports/figures" / png).read_bytes().startswith(PNG_SIGNATURE)
    for csv in (figures.ROC_CSV, figures.AUROC_CSV, figures.TRAIN_CSV, figures.RELIABILITY_CSV):
        assert (root / "plots/report" / csv).is_file()
    auroc = pd.read_csv(root / "plots/report" / figures.AUROC_CSV)
    seed_1 = auroc[auroc["model"] == "seed 1"].set_index("finding")["auroc"]
    metrics = json.loads((root / "metrics/eval/seed_1.json").read_text())["auroc"]
    assert seed_1.to_dict() == pytest.approx({k: v for k, v in metrics.items() if v is not None}, abs=1e-5)


def test_a_phantom_run_draws_no_published_number_beside_its_own(tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[str, tuple[list[str], str]] = {}
    plot = figures.plot_auroc_dots

    def spy(table: pd.DataFrame, findings: list[str], refs: list[figures.Reference], path: Path, title: str = "",
            labels: dict[str, str] | None = None) -> None:
        drawn[path.parts[-4]] = ([r.label for r in refs], title)
        plot(table, findings, refs, path, title, labels)

    monkeypatch.setattr(figures, "plot_auroc_dots", spy)
    _, phantom = _figures_run(tiny_data, tmp_path / "phantom", "phantom")
    _, real = _figures_run(tiny_data, tmp_path / "real", "nih")
    assert drawn["phantom"][0] == [] and drawn["phantom"][1].startswith("Phantom run")
    assert drawn["real"][0] == ["CheXNet [random 70/10/20]", "seed study, mean of seeds [random 2 %, per seed]"]
    assert set(pd.read_csv(phantom / "plots/report" / figures.AUROC_CSV)["model"]) == {"seed 1", "seed 2", "ensemble"}
    assert "CheXNet [random 70/10/20]" in set(pd.read_csv(real / "plots/report" / figures.AUROC_CSV)["model"])


def test_a_masked_label_cell_takes_no_part_in_the_roc_or_reliability_tables() -> None:
    curves = _curves(seeds=1)
    labels, probs = next(iter(curves.values()))
    masked = labels.astype(np.float64)
    masked[:50, 0] = np.nan
    roc = plotdata.roc_table({"m": (masked, probs)}, FINDINGS)
    alone = plotdata.roc_table({"m": (labels[50:], probs[50:])}, FINDINGS)
    first = FINDINGS[0]
    pd.testing.assert_frame_equal(roc[roc["finding"] == first].reset_index(drop=True),
                                  alone[alone["finding"] == first].reset_index(drop=True))
    table = plotdata.reliability_table({"m": (masked, probs)}, 10)
    assert int(table["count"].sum()) == labels.size - 50


@pytest.mark.parametrize("count", [5, 14, 19])
def test_the_roc_figure_has_a_panel_for_every_finding_of_any_label_space(tmp_path: Path, count: int) -> None:
    names = [f"finding {i}" for i in range(count)]
    rng = np.random.default_rng(0)
    labels = (rng.random((80, count)) < 0.3).astype(float)
    table = plotdata.roc_table({"m": (labels, rng.random((80, count)))}, names)
    figures.plot_roc(table, names, {}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes().startswith(PNG_SIGNATURE)
