"""The report's sections beyond the seed study, rendered from synthetic stage outputs: external validation (a planted
drop is found, and no external site is said), Where it looks (chance beside every hit rate, Wang 2017 only among the
published references) and Label quality (on the real release's image ids; on the phantom, a sentence)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cxrstudy.reporting import labelquality as lq
from cxrstudy.reporting import report
from tests.conftest import markdown_tables
from tests.synthetic import Study, make_external, make_study, no_external, write_localize


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def _summary(study: Study) -> dict:
    return json.loads((study.root / "metrics/report.json").read_text())


def test_a_planted_external_drop_is_found_with_its_counts(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=200, strength={"Effusion": 2.5, "Pneumothorax": 2.5})
    folder = make_external(study, strength=0.05)  # the model sees almost nothing at site B
    text = study.run(inputs=report.Inputs(study.coverage, external=folder))
    ensemble = _summary(study)["external"]["models"]["ensemble"]
    assert ensemble["drop"] > 0 and ensemble["drop_low"] > 0, ensemble
    section = _section(text, "External validation")
    assert "Effusion = CheXpert-shaped phantom (site B)'s Pleural Effusion" in section
    sites = markdown_tables(section)[0]
    assert sites[0][2].startswith("Positive patients / images (internal test)") and len(sites) == 2 + 7


def test_without_an_external_site_the_section_says_so(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=30)
    text = study.run(inputs=report.Inputs(study.coverage, external=no_external(study)))
    assert "No external test set (`ingest.external: none`)" in _section(text, "External validation")
    assert _summary(study)["external"] is None


def test_where_it_looks_puts_chance_beside_every_hit_rate(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=200)
    folder, heatmaps = write_localize(study, hit=0.45, chance=0.06)
    text = study.run(inputs=report.Inputs(study.coverage, localize=folder, heatmaps=heatmaps),
                     figures_dir=tmp_path / "reports/figures")
    section = _section(text, "Where it looks")
    pooled = markdown_tables(section)[0]
    assert pooled[0][:5] == ["Score", "Seed", "Boxes / patients", "Hit rate [95% CI]", "Chance"]
    assert all(row[4] == "0.060" for row in pooled[2:])
    assert "figures/localisation_overlays.png" in section and (tmp_path / "reports/figures/localisation_overlays.png")
    assert "Wang et al. 2017, ChestX-ray14" not in section
    published = _section(text, "Published References")
    assert "**Localisation, as Wang et al. 2017 published it**" in published and "not this run's" in published
    tracked = _summary(study)["localisation"]["seed_1"]
    assert tracked["pointing_chance"] == 0.06 and tracked["excess_low"] > 0 and tracked["boxes"] == 66


def test_label_quality_runs_on_the_real_releases_image_ids(tmp_path: Path) -> None:
    experts = lq.load_expert_labels().table
    ids = sorted(experts.loc[experts["set"] == "test", "image"])[:280]
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=100, names=ids, ingest={"source": "nih"})
    text = study.run()
    tables = markdown_tables(_section(text, "Label quality"))
    agreement = pd.DataFrame(tables[0][2:], columns=tables[0][0])
    assert list(agreement["Experts' finding"]) == ["Pneumothorax", "Nodule or mass"]
    assert set(agreement["Test images"]) == {"280"}
    assert len(tables[1]) == 2 + 2 * 3, "each finding: two seeds and the ensemble"
    tracked = _summary(study)["label_quality"]
    assert tracked["Nodule or mass"]["images"] == 280 and set(tracked["Pneumothorax"]["auroc"]) == {
        "seed_1", "seed_2", "ensemble"}


def test_on_the_phantom_label_quality_says_it_applies_to_the_real_release(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=30)
    section = _section(study.run(), "Label quality")
    assert "This section applies to the real release" in section and markdown_tables(section) == []
    assert "label_quality" not in _summary(study)
