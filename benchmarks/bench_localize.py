"""What localisation (Grad-CAM and its bootstrap, run inside the evaluate stage) costs beside evaluate and report, and
what each Grad-CAM layer (and, optionally, a higher training resolution) gives.

Run on a project that has been through `make repro` (data/, models/seed_N, plots/train): it reruns, in a scratch
folder and as DVC runs them (one `python -m cxrstudy ...` process each), every seed's `evaluate` and the `report`,
and checks the target: localisation (Grad-CAM and its bootstrap, as evaluate times them) adds at most 20 % to what
evaluate and report cost without it. Then, for each layer in `--layers`, it evaluates every seed again and records
the time and the pooled hit rates beside chance and shuffled boxes. With `--resolution N`, it also preprocesses the
project's raw data at N px, trains one seed there (timed) and sweeps the layers on that model.

    .venv/bin/python benchmarks/bench_localize.py                       # the default run, all four layers
    .venv/bin/python benchmarks/bench_localize.py --resolution 128      # + one seed trained at 128 px
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import RESULTS, ROOT, machine, table, target, target_rows, write_result

LAYERS = "denseblock1,denseblock2,denseblock3,denseblock4"
GOAL = 0.20  # localisation may add at most this share to evaluate + report


REPEATS = 1  # each command runs this many times; the fastest counts (the least disturbed by other load)
LAST_OUTPUT: list[str] = [""]  # the standard output of the fastest run of the last command


def cxrstudy(cwd: Path, params: Path, *args: str, repeats: int = 0) -> float:
    """Run `python -m cxrstudy --params PARAMS ARGS` in `cwd` `repeats` (default `REPEATS`) times; the fastest wall
    time in seconds."""
    best = float("inf")
    for _ in range(repeats or REPEATS):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cxrstudy", "--params", str(params), *args], cwd=cwd,
                              capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"cxrstudy {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        if seconds < best:
            best, LAST_OUTPUT[0] = seconds, done.stdout
    return best


def inner_seconds(stdout: str) -> float:
    """Grad-CAM + scores and bootstrap, as evaluate reports them for its localisation."""
    found = re.search(r"Grad-CAM ([0-9.]+) s, scores and bootstrap ([0-9.]+) s", stdout)
    if not found:
        raise SystemExit(f"evaluate did not report its localisation times:\n{stdout[-2000:]}")
    return float(found.group(1)) + float(found.group(2))


def with_params(raw: dict[str, Any], path: Path, **sections: Any) -> Path:
    """`raw` with some sections updated (a dict) or replaced (anything else, e.g. `seeds`), written to `path`."""
    merged = json.loads(json.dumps(raw))
    for name, values in sections.items():
        merged[name] = {**merged[name], **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def data_args(project: Path, processed: Path | None = None) -> list[str]:
    return ["--raw", str(project / "data/raw"), "--processed", str(processed or project / "data/processed"),
            "--splits", str(project / "data/splits")]


def evaluate_seed(project: Path, params: Path, seed: int, scratch: Path, processed: Path | None = None,
                  model: Path | None = None, repeats: int = 0) -> float:
    """One seed's evaluate stage (with its localisation) into `scratch`: its wall time."""
    return cxrstudy(project, params, "evaluate", "--seed", str(seed), *data_args(project, processed),
                    "--model", str(model or project / f"models/seed_{seed}"),
                    "--metrics", str(scratch / f"metrics/eval/seed_{seed}.json"),
                    "--predictions", str(scratch / f"predictions/seed_{seed}.csv"),
                    "--val-predictions", str(scratch / f"predictions/val/seed_{seed}.csv"),
                    "--localize", str(scratch / f"metrics/localize/seed_{seed}.json"),
                    "--heatmaps", str(scratch / f"heatmaps/seed_{seed}.npz"), repeats=repeats)


def stage_costs(project: Path, params: Path, seeds: list[int], scratch: Path) -> dict[str, Any]:
    """Wall times of evaluate (each seed, localisation included) and report, as separate processes, and the share
    that localisation adds to them."""
    evaluate, inner = {}, {}
    for seed in seeds:
        evaluate[seed] = evaluate_seed(project, params, seed, scratch)
        inner[seed] = inner_seconds(LAST_OUTPUT[0])
    coverage = project / "metrics/coverage.json"
    if not coverage.is_file():  # the report's interval methods (its own stage; not timed here)
        coverage = scratch / "coverage.json"
        cxrstudy(project, params, "coverage", "--out", str(coverage), repeats=1)
    report = cxrstudy(project, params, "report", "--coverage", str(coverage),
                      "--metrics", str(scratch / "metrics/eval"),
                      "--predictions", str(scratch / "predictions"), "--history", str(project / "plots/train"),
                      *data_args(project), "--out", str(scratch / "report.md"), "--figures", str(scratch / "figures"),
                      "--plots", str(scratch / "plots"), "--summary", str(scratch / "report.json"))
    total = sum(evaluate.values()) + report
    without = total - sum(inner.values())
    return {"evaluate_s": evaluate, "report_s": report, "gradcam_and_bootstrap_s": inner,
            "evaluate_plus_report_s": total, "without_localisation_s": without,
            "gradcam_and_bootstrap_share": sum(inner.values()) / without}


def pooled(metrics_file: Path) -> dict[str, Any]:
    m = json.loads(metrics_file.read_text())
    p = m["pooled"]
    row = {"map_size": m["map_size"], "boxes": p["boxes"], "patients": p["patients"], "flat_maps": m["flat_maps"]}
    for key in ("hit", "low", "high", "chance", "shuffled", "excess", "excess_low", "excess_high"):
        row[f"pointing_{key}"] = p["pointing"][key]
    for t, entry in p["iobb"].items():
        row[f"iobb_{t}"] = {k: entry[k] for k in ("hit", "chance", "shuffled")}
    return row


def layer_sweep(project: Path, raw: dict[str, Any], seeds: list[int], layers: list[str], scratch: Path,
                processed: Path | None = None, models: Path | None = None) -> list[dict[str, Any]]:
    """Each layer on each seed, once: the hit rates are deterministic, the times (Grad-CAM + bootstrap)
    indicative (one run each)."""
    rows = []
    for layer in layers:
        params = with_params(raw, scratch / f"params-{layer}.yaml", localize={"layer": layer})
        for seed in seeds:
            evaluate_seed(project, params, seed, scratch, processed, (models or project / "models") / f"seed_{seed}",
                          repeats=1)
            rows.append({"layer": layer, "seed": seed, "seconds": round(inner_seconds(LAST_OUTPUT[0]), 2),
                         **pooled(scratch / f"metrics/localize/seed_{seed}.json")})
    return rows


def resolution_run(project: Path, raw: dict[str, Any], size: int, seed: int, layers: list[str],
                   scratch: Path) -> dict[str, Any]:
    """Preprocess the raw data at `size` px, train and evaluate one seed there (timed), sweep the layers."""
    params = with_params(raw, scratch / f"params-{size}.yaml", preprocess={"image_size": size},
                         train={"image_size": size})
    processed, model = scratch / f"processed-{size}", scratch / f"models-{size}/seed_{seed}"
    times = {"preprocess_s": cxrstudy(project, params, "preprocess", "--raw", str(project / "data/raw"),
                                      "--out", str(processed))}
    times["train_s"] = cxrstudy(project, params, "train", "--seed", str(seed), *data_args(project, processed),
                                "--out", str(model), "--plots", str(scratch / f"train-{size}.csv"),
                                "--checkpoints", str(scratch / f"ckpt-{size}"))
    times["evaluate_s"] = evaluate_seed(project, params, seed, scratch, processed, model)
    auroc = json.loads((scratch / f"metrics/eval/seed_{seed}.json").read_text())["auroc_mean"]
    sized = yaml.safe_load(params.read_text())
    rows = layer_sweep(project, sized, [seed], layers, scratch, processed, scratch / f"models-{size}")
    return {"image_size": size, "seed": seed, **{k: round(v, 2) for k, v in times.items()}, "auroc_mean": auroc,
            "layers": rows}


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def sweep_table(title: str, rows: list[dict[str, Any]]) -> str:
    header = ["layer", "seed", "grid", "s", "pointing", "95% CI", "chance", "shuffled", "IoBB>=0.1", "chance",
              "IoBB>=0.5", "chance"]
    body = [[r["layer"], r["seed"], "x".join(map(str, r["map_size"])), fmt(r["seconds"]), fmt(r["pointing_hit"]),
             f"{fmt(r['pointing_low'])}-{fmt(r['pointing_high'])}", fmt(r["pointing_chance"]),
             fmt(r["pointing_shuffled"]), fmt(r["iobb_0.1"]["hit"]), fmt(r["iobb_0.1"]["chance"]),
             fmt(r["iobb_0.5"]["hit"]), fmt(r["iobb_0.5"]["chance"])] for r in rows]
    return table(title, header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT, help="a project after `make repro` (default: this one)")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the project's params.yaml seeds)")
    parser.add_argument("--layers", default=LAYERS, help="Grad-CAM layers to sweep (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=0, help="also train one seed at this size (px); 0: no")
    parser.add_argument("--scratch", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command; the fastest counts")
    parser.add_argument("--out", type=Path, default=RESULTS / "localize.json")
    args = parser.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    project = args.project.resolve()
    raw = yaml.safe_load((project / "params.yaml").read_text())
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(raw["seeds"])
    raw["seeds"] = seeds  # the report covers exactly the seeds measured
    layers = [s for s in args.layers.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench-localize-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        params = with_params(raw, scratch / "params.yaml")
        costs = stage_costs(project, params, seeds, scratch)
        sweep = layer_sweep(project, raw, seeds, layers, scratch)
        resolution = (resolution_run(project, raw, args.resolution, seeds[0], layers, scratch)
                      if args.resolution else None)
    targets = [target("Grad-CAM and its bootstrap add at most 20 % to evaluate + report",
                      costs["gradcam_and_bootstrap_share"], GOAL, higher_is_better=False,
                      unit="of evaluate + report without them")]
    settings = {"seeds": seeds, "train_image_size": raw["train"]["image_size"], "localize": raw["localize"],
                "report": raw["report"]}
    result = {"benchmark": "localize", "repeats": REPEATS, "project_params": settings,
              "stage_costs": costs, "layers": sweep, "resolution": resolution, "targets": targets,
              "machine": machine()}
    print(table("stage wall times (s), one process each, as DVC runs them", ["stage", "seconds"],
                [*[[f"evaluate seed {s} (localisation included)", fmt(v)] for s, v in costs["evaluate_s"].items()],
                 *[[f"  of which Grad-CAM + bootstrap, seed {s}", fmt(v)]
                   for s, v in costs["gradcam_and_bootstrap_s"].items()],
                 ["report", fmt(costs["report_s"])],
                 ["evaluate + report without localisation", fmt(costs["without_localisation_s"])],
                 ["Grad-CAM + bootstrap / (evaluate + report without them)",
                  f"{costs['gradcam_and_bootstrap_share']:.1%}"]]))
    print(sweep_table(f"\nGrad-CAM layer sweep at {raw['train']['image_size']} px (pooled over all boxes)", sweep))
    if resolution:
        print(f"\nresolution {resolution['image_size']} px, seed {resolution['seed']}: preprocess "
              f"{resolution['preprocess_s']} s, train {resolution['train_s']} s, evaluate "
              f"{resolution['evaluate_s']} s, mean AUROC {resolution['auroc_mean']}")
        print(sweep_table(f"Grad-CAM layer sweep at {resolution['image_size']} px", resolution["layers"]))
    print(table("\ntargets", ["target", "measured", "verdict"], target_rows(targets)))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
