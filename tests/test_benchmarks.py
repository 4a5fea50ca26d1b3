"""The benchmark scripts run: each, at tiny sizes, prints its table and writes valid JSON with the expected keys.

Behaviour only, never speed (speed targets live in the benchmarks' own output). gpu_check.py runs here in its CPU
smoke mode, the same code path it takes on a GPU, and its imports are checked with pydantic and DVC hidden, as on
the GPU image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TARGET_KEYS = {"target", "goal", "measured", "unit", "met"}

# Runs a script with some top-level packages made unimportable (as on a GPU box without them).
BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(script: str, *args: str, out: Path, timeout: int = 600) -> tuple[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    return proc.stdout, json.loads(out.read_text())


def check_targets(result: dict[str, Any]) -> None:
    assert result["targets"], "every benchmark states its targets"
    for t in result["targets"]:
        assert t.keys() >= TARGET_KEYS
        assert t["met"] in (True, False, None)


def test_bench_preprocess(tmp_path: Path) -> None:
    out = tmp_path / "preprocess.json"
    stdout, r = run_script("bench_preprocess.py", "--n", "6", "--naive-n", "1", "--image-size", "64",
                           "--clahe-size", "128", "--workers", "2", "--repeats", "1", out=out)
    assert "floor (decode only, 1 process)" in stdout and "targets" in stdout
    rates = r["images_per_s"]
    for key in ("floor (decode only, 1 process)", "naive skimage (1 process)", "ours, 1 process",
                "ours, 2 processes"):
        assert rates[key] > 0
    assert r["identical_across_processes"] is True  # the same bytes at 1 and 2 processes
    assert r["efficiency_vs_floor"] > 0 and r["scaling"] > 0
    assert {"decode", "clahe_at_source", "resize_source_to_stored"} <= r["ms_per_image_single_thread"].keys()
    assert r["clahe_at_reduced_size"]["clahe_size"] == 128
    assert r["machine"]["cpus"] >= 1
    check_targets(r)


def test_bench_train(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    stdout, r = run_script("bench_train.py", "--sizes", "32", "--batch", "2", "--steps", "1", "--eval-batch", "2",
                           "--eval-batches", "1", "--threads", "1", "--device", "cpu", out=out)
    assert "train step and evaluation" in stdout
    assert {row["variant"] for row in r["rows"]} == {"fp32 NCHW", "fp32 channels_last"}
    assert all(row["train_img_s"] > 0 and row["eval_img_s"] > 0 for row in r["rows"])
    assert set(r["channels_last_speedup"]["32"]) == {"train", "eval"}
    # the speed option must not change the results in meaning
    assert r["agreement"]["variants"]["fp32 channels_last"]["max_abs_prob_diff"] < 1e-3
    check_targets(r)


@pytest.mark.slow
def test_bench_loader(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    stdout, r = run_script("bench_loader.py", "--n", "24", "--stored", "40", "--size", "32", "--batch", "4",
                           "--workers", "0,1", "--shard-size", "10", "--reads", "24", "--dvc-n", "12",
                           "--step-batch", "2", "--step-steps", "1", out=out)
    assert "processed formats" in stdout and "training loader, 1 workers" in stdout
    fmts = r["formats"]
    assert {k: f["files"] for k, f in fmts.items()} == {"png_dir": 24, "npy": 1, "shards": 4}  # 3 shards + index
    for f in fmts.values():
        assert f["bytes"] > 0 and f["random_reads_per_s"] > 0
        assert set(f["dvc"]) == {"images", "add_s", "status_noop_s", "push_s"} and f["dvc"]["images"] == 12
    assert r["dvc_projection_nih"]["measured_files"] == 12
    assert set(r["loader_images_per_s_by_workers"]) == {"0", "1"}
    assert r["train_step_images_per_s"] > 0 and r["loader_over_step"] > 0
    assert r["augment"]["brightness"] == 0.1  # the study's augmentations (configs/nih-study.yaml)
    assert r["chosen_format"] == "shards"  # what the preprocess stage writes
    check_targets(r)


@pytest.mark.slow
def test_bench_bombs(tmp_path: Path) -> None:
    out = tmp_path / "bombs.json"
    stdout, r = run_script("bench_bombs.py", "--n", "3", "--source-px", "128", "--png-bomb-px", "3000",
                           "--tar-member-mb", "8", "--max-image-mb", "2", "--max-image-pixels", "4000000",
                           "--work", str(tmp_path), out=out)
    assert "what the stage said about the bomb" in stdout
    runs = {(x["case"], x["limits"]): x for x in r["runs"]}
    assert set(runs) == {(case, limits) for case in ("ordinary", "png_bomb", "tar_bomb", "header_bomb")
                         for limits in ("params.yaml", "largest allowed")}
    for x in runs.values():
        assert x["exit"] == 0 and not x["traceback"], x
        assert len(x["worker_peaks_mb"]) == 2 and min(x["worker_peaks_mb"]) > 0 and x["main_peak_mb"] > 0
    assert runs[("ordinary", "params.yaml")]["said"] == []
    assert "3000 x 3000 px declared in its header, over the limit of 4,000,000" in runs[("png_bomb", "params.yaml")][
        "said"][0]
    assert runs[("png_bomb", "largest allowed")]["said"] == []  # decoded: 9 million pixels are allowed there
    assert "member of images_002.tar.gz declares 8.0 MB, over the limit of 2.0 MB" in runs[
        ("tar_bomb", "params.yaml")]["said"][0]
    assert "neither a PNG nor a JPEG" in runs[("tar_bomb", "largest allowed")]["said"][0]  # read whole, then refused
    assert all("60000 x 60000 px" in runs[("header_bomb", limits)]["said"][0]
               for limits in ("params.yaml", "largest allowed"))
    assert len(r["targets"]) == 6
    check_targets(r)
    assert not list(tmp_path.glob("bench-bombs-*"))  # the scratch folder is gone


@pytest.mark.infra  # the scale smoke run: a synthetic NIH-sized release through DVC, about 1 minute
def test_bench_scale(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    stdout, r = run_script("bench_scale.py", "--n", "40,60", "--size", "64", "--stored", "32", "--workers", "2",
                           "--jobs", "2", "--layouts", "--work", str(tmp_path), out=out, timeout=900)
    assert "no-op dvc status" in stdout and "raw-layout options at 60 images" in stdout
    assert [run["images"] for run in r["runs"]] == [40, 60]
    for run in r["runs"]:
        assert run["release"]["archives"] == 12 and run["release"]["archive_bytes"] > 0
        assert set(run["stages"]) == {"manifest", "ingest@internal", "preprocess@internal", "split"}
        for stage in run["stages"].values():
            assert stage["command_s"] > 0 and stage["wall_s"] >= stage["command_s"]
            assert stage["peak_rss_mb_largest_process"] > 0 and stage["peak_rss_mb_tree"] > 0
        assert len(run["noop"]["dvc_status_s"]) == 3 and len(run["noop"]["dvc_repro_split_s"]) == 3
        assert run["one_pixel_changed"]["shown"] is True  # versioned: one changed pixel shows in dvc status
        assert run["bytes"]["data/processed"] > 0
        changed = run["changed_archive"]  # one archive of the release changed: only its shard is made again
        assert changed["ingest_reran"] and changed["preprocess_reran"]
        assert (changed["shards"], changed["shards_kept"]) == (12, 11)
        assert changed["cache_type"] == "hardlink,symlink" and 0 <= changed["shards_same_file_as_before"] <= 11
        assert changed["preprocess_command_s"] > 0 and changed["full_preprocess_command_s"] > 0
        fingerprint = run["checkpoint_fingerprint"]
        assert fingerprint["shards"] == 12 and fingerprint["processed_bytes"] > 0
        assert fingerprint["fingerprint_s"] > 0 and fingerprint["sha256_of_processed_s"] >= 0
    layouts = r["runs"][1]["layouts"]
    assert [x["files"] for x in layouts] == [60, 60, 12, 12]
    assert all(len(x["noop_dvc_status_s"]) == 3 for x in layouts)
    assert not list(tmp_path.glob("cxr-scale-*"))  # the scratch folder is gone
    check_targets(r)


@pytest.fixture(scope="module")
def gpu_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu") / "gpu_check.json"
    stdout, r = run_script("gpu_check.py", "--cpu-smoke", out=out, timeout=900)
    return stdout, r, out


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_prints_its_table_last(gpu_smoke: tuple[str, dict[str, Any], Path]) -> None:
    stdout, r, out = gpu_smoke
    assert r["mode"] == "cpu-smoke" and r["errors"] == []
    tail = stdout[stdout.index(f"wrote {out}"):]
    assert "gpu_check (cpu-smoke)" in tail and "projection:" in tail and "targets" in tail
    assert {row["variant"] for row in r["synthetic_train"]} == {"fp32 NCHW", "fp32 channels_last"}
    assert all(row["status"] == "ok" and row["img_s"] > 0 for row in r["synthetic_train"])
    assert r["batch_sweep"] and r["deterministic"]["img_s"] > 0
    assert set(r["loader_alone_img_s"]) == {"0", "1"}
    real = r["real_loader_train"]
    assert real["epoch_img_s"] > 0 and real["synthetic_img_s"] > 0 and real["epoch_over_synthetic"] > 0
    assert {"synthetic_img_s", "real_loader_0_workers_img_s", "real_loader_1_workers_img_s"} <= r["evaluation"].keys()
    assert r["preprocess"]["img_s_per_core"] > 0
    assert r["agreement"]["variants"]["fp32 channels_last"]["max_abs_prob_diff"] < 1e-3
    proj = r["projection"]
    assert proj["study_min"] > 0 and proj["goal_min"] == 45
    assert len(r["targets"]) == 4
    check_targets(r)
    assert "Projected 4-seed NIH study" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_gpu_check_writes_its_projection_into_the_readme(gpu_smoke: tuple[str, dict[str, Any], Path],
                                                         tmp_path: Path) -> None:
    _, r, out = gpu_smoke
    readme = tmp_path / "README.md"
    shutil.copy(BENCH / "README.md", readme)
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--readme-from", str(out), "--readme",
                           str(readme)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert f"Projected 4-seed NIH study on {r['machine']['device_name']}" in text
    assert text.count("<!-- gpu-check:begin -->") == 1 and text.count("<!-- gpu-check:end -->") == 1
    before, after = (BENCH / "README.md").read_text().split("<!-- gpu-check:begin -->")
    assert text.startswith(before) and text.endswith(after.split("<!-- gpu-check:end -->")[1])


def test_gpu_check_imports_without_dvc() -> None:
    """The GPU machine has torch, torchvision, numpy, OpenCV (and pandas, scikit-learn, tqdm) but no DVC; pydantic
    travels there as wheels (benchmarks/README.md), since the check reads the study's settings through the schema."""
    proc = subprocess.run([sys.executable, "-c", BLOCKER, "dvc",
                           str(BENCH / "gpu_check.py"), "--check-imports"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "imports fine" in proc.stdout
