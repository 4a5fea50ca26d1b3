"""Command line: one sub-command per DVC stage (`python -m cxrstudy <stage> --help`), and four tools: `check-params`
(validate params.yaml before DVC reads it), `profile`, `experiments` (a comparison of DVC experiments) and `compare`
(head against base on the same test patients).

Every stage validates the whole `params.yaml` first, then pins the numerics (`cxrstudy.numerics`) before its module,
and with it torch, NumPy or OpenCV, is imported. Bad input exits with status 2 and a message that names the
parameter, file or row at fault; a full disk or an unwritable folder exits with status 1 and names the output it
could not write (the earlier output is left as it was); an interrupted stage exits 128 + the signal number (training
after its last checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrstudy import numerics
from cxrstudy.atomic import DISK_FULL, OutputError, sweep_tree
from cxrstudy.errors import InputError, Interrupted, TrainingError
from cxrstudy.params import DEFAULT_PARAMS, Params, load_params

RAW = Path("data/raw")
PROCESSED = Path("data/processed")
SPLITS = Path("data/splits")
EXTERNAL_RAW = Path("data/external/raw")
EXTERNAL_PROCESSED = Path("data/external/processed")
# Where the stages write (every output of dvc.yaml, and the checkpoints): each stage sweeps there first what killed
# writers left, whatever stage they were, since DVC may restore a killed stage's output from its run cache instead.
OUTPUT_FOLDERS = tuple(map(Path, ("data", "models", "checkpoints", "plots", "metrics", "predictions", "heatmaps",
                                  "reports")))
STAGES = ("manifest", "ingest", "preprocess", "split", "train", "evaluate", "external", "coverage", "report")


def _manifest(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.data import manifest

    manifest.run(p, a.out)


def _ingest(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.data import ingest

    ingest.run(p, a.site, a.out or (RAW if a.site == "internal" else EXTERNAL_RAW), workers=a.workers)


def _preprocess(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.data import preprocess

    preprocess.run(p, a.raw, a.out)


def _split(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.data import split

    split.run(p, a.raw, a.out, a.processed)


def _check_seed(p: Params, seed: int) -> None:
    if seed not in p.seeds:
        raise InputError(f"--seed {seed}: not in params.yaml seeds {p.seeds}; add it there first")


def _train(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.learning import train

    _check_seed(p, a.seed)
    train.run(p, a.seed, a.raw, a.processed, a.splits, a.out or Path(f"models/seed_{a.seed}"),
              a.plots or Path(f"plots/train/seed_{a.seed}.csv"),
              a.checkpoints or Path(f"checkpoints/seed_{a.seed}"))


def _evaluate(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.learning import evaluate

    _check_seed(p, a.seed)
    evaluate.run(p, a.seed, a.raw, a.processed, a.splits, a.model or Path(f"models/seed_{a.seed}"),
                 a.metrics or Path(f"metrics/eval/seed_{a.seed}.json"),
                 a.predictions or Path(f"predictions/seed_{a.seed}.csv"),
                 a.val_predictions or Path(f"predictions/val/seed_{a.seed}.csv"),
                 a.localize or Path(f"metrics/localize/seed_{a.seed}.json"),
                 a.heatmaps or Path(f"heatmaps/seed_{a.seed}.npz"))


def _external(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.learning import external

    _check_seed(p, a.seed)
    external.run(p, a.seed, a.raw, a.external_raw, a.external_processed, a.model or Path(f"models/seed_{a.seed}"),
                 a.metrics or Path(f"metrics/external/seed_{a.seed}.json"),
                 a.predictions or Path(f"predictions/external/seed_{a.seed}.csv"))


def _report(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.reporting import report

    report.run(p, a.metrics, a.splits, a.out, predictions_dir=a.predictions, history_dir=a.history, raw_dir=a.raw,
               processed_dir=a.processed, figures_dir=a.figures, plots_dir=a.plots, summary_file=a.summary,
               inputs=report.Inputs(a.coverage, a.dataset, a.external, a.grid, a.external_predictions, a.localize,
                                    a.heatmaps, a.subgroups))


def _subgroups(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.reporting import subgroups

    subgroups.run(p, a.metrics, a.predictions, a.splits, a.dataset, a.coverage, a.out)


def _coverage(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.reporting import coverage

    coverage.run(p, a.out)


def _experiments(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.reporting import experiments

    experiments.run(p, a.exp_show, a.repo, a.out, baseline=a.baseline, coverage_file=a.coverage,
                    summary_file=a.summary)


def _compare(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy.reporting import compare

    if (a.base is None) == (a.base_dir is None):
        raise InputError("compare: give exactly one of --base REV (predictions in git) or --base-dir DIR")
    compare.run(p, a.head, a.out, base_rev=a.base, base_dir=a.base_dir, repo=a.repo, splits_dir=a.splits,
                coverage_file=a.coverage)


def _check_params(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import profile

    if a.profile is not None:
        profile.load(a.profile, a.params)
    print(f"{a.params}{f' with {a.profile}' if a.profile else ''}: valid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrstudy", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameters file (default: %(default)s)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, func: Callable[[Params, argparse.Namespace], None], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = stage("manifest", _manifest, "record what the configured data source holds (ingest re-runs when it changes)")
    p.add_argument("--out", type=Path, default=Path("data/source-manifest.json"))

    p = stage("ingest", _ingest, "turn the configured source into the dataset contract (images.csv, dataset.json, "
                                 "boxes.csv, the images as archives)")
    p.add_argument("--site", choices=("internal", "external"), default="internal",
                   help="internal: the training site (ingest.source); external: the external test site "
                        "(ingest.external) (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="default: data/raw, or data/external/raw")
    p.add_argument("--workers", type=int, default=2, help="processes drawing a phantom (default: %(default)s)")

    p = stage("preprocess", _preprocess, "CLAHE and resize every image into one uint8 array per archive")
    p.add_argument("--raw", type=Path, default=RAW)
    p.add_argument("--out", type=Path, default=PROCESSED)

    p = stage("split", _split, "patient-wise train/val/test lists, checked for leakage")
    p.add_argument("--raw", type=Path, default=RAW)
    p.add_argument("--processed", type=Path, default=PROCESSED, help="only the images preprocess produced are split")
    p.add_argument("--out", type=Path, default=SPLITS)

    for name, func, text in (("train", _train, "train one seed's DenseNet-121"),
                             ("evaluate", _evaluate, "test-set metrics and predictions for one seed")):
        p = stage(name, func, text)
        p.add_argument("--seed", type=int, required=True, help="a training seed listed in params.yaml")
        p.add_argument("--raw", type=Path, default=RAW)
        p.add_argument("--processed", type=Path, default=PROCESSED)
        p.add_argument("--splits", type=Path, default=SPLITS)
        if name == "train":
            p.add_argument("--out", type=Path, help="model folder (default: models/seed_SEED)")
            p.add_argument("--plots", type=Path, help="per-epoch history CSV (default: plots/train/seed_SEED.csv)")
            p.add_argument("--checkpoints", type=Path, help="resume folder (default: checkpoints/seed_SEED)")
        else:
            p.add_argument("--model", type=Path, help="model folder (default: models/seed_SEED)")
            p.add_argument("--metrics", type=Path, help="metrics JSON (default: metrics/eval/seed_SEED.json)")
            p.add_argument("--predictions", type=Path, help="test predictions CSV (default: predictions/seed_SEED.csv)")
            p.add_argument("--val-predictions", type=Path,
                           help="validation predictions CSV (default: predictions/val/seed_SEED.csv)")
            p.add_argument("--localize", type=Path,
                           help="where the model looks, scored against the boxes: metrics JSON (default: "
                                "metrics/localize/seed_SEED.json)")
            p.add_argument("--heatmaps", type=Path, help="the heatmaps of the localisation figure's images (default: "
                                                         "heatmaps/seed_SEED.npz)")

    p = stage("external", _external, "test one seed's model at the external site, on the findings both label "
                                     "spaces share")
    p.add_argument("--seed", type=int, required=True, help="a training seed listed in params.yaml")
    p.add_argument("--raw", type=Path, default=RAW, help="the training site's dataset (its label space)")
    p.add_argument("--external-raw", type=Path, default=EXTERNAL_RAW)
    p.add_argument("--external-processed", type=Path, default=EXTERNAL_PROCESSED)
    p.add_argument("--model", type=Path, help="model folder (default: models/seed_SEED)")
    p.add_argument("--metrics", type=Path, help="metrics JSON (default: metrics/external/seed_SEED.json)")
    p.add_argument("--predictions", type=Path, help="predictions CSV (default: predictions/external/seed_SEED.csv)")

    p = stage("coverage", _coverage, "measure the coverage of the report's intervals on simulated test sets and "
                                     "choose their method (metrics/coverage.json)")
    p.add_argument("--out", type=Path, default=Path("metrics/coverage.json"))

    p = stage("subgroups", _subgroups, "per sex, age band, view and follow-up: each seed's and the ensemble's mean "
                                       "AUROC and underdiagnosis rate, and the gaps (metrics/subgroups.json)")
    p.add_argument("--metrics", type=Path, default=Path("metrics/eval"))
    p.add_argument("--predictions", type=Path, default=Path("predictions"))
    p.add_argument("--splits", type=Path, default=SPLITS)
    p.add_argument("--dataset", type=Path, default=RAW / "dataset.json",
                   help="the data's description; its folder's images.csv gives sex, age, view and follow-up")
    p.add_argument("--coverage", type=Path, default=Path("metrics/coverage.json"))
    p.add_argument("--out", type=Path, default=Path("metrics/subgroups.json"))

    p = stage("report", _report, "render reports/report.md (and its figures) from the metrics and predictions")
    p.add_argument("--metrics", type=Path, default=Path("metrics/eval"))
    p.add_argument("--predictions", type=Path, default=Path("predictions"))
    p.add_argument("--history", type=Path, default=Path("plots/train"))
    p.add_argument("--raw", type=Path, default=RAW)
    p.add_argument("--processed", type=Path, default=PROCESSED)
    p.add_argument("--splits", type=Path, default=SPLITS)
    p.add_argument("--figures", type=Path, default=Path("reports/figures"))
    p.add_argument("--plots", type=Path, default=Path("plots/report"))
    p.add_argument("--summary", type=Path, default=Path("metrics/report.json"))
    p.add_argument("--coverage", type=Path, default=Path("metrics/coverage.json"),
                   help="the coverage stage's output: the interval methods and their measured coverage")
    p.add_argument("--dataset", type=Path, default=None,
                   help="the data's description (data/raw/dataset.json): label source, official test list; its "
                        "folder's images.csv gives the subgroups (\"Whom it fails\")")
    p.add_argument("--external", type=Path, default=None,
                   help="the external evaluation's metrics folder (seed_N.json); without one the report says "
                        "there is no external test set")
    p.add_argument("--grid", type=Path, default=None,
                   help="the loss x CLAHE grid's summary (reports/experiments.json, from `cxrstudy experiments`)")
    p.add_argument("--external-predictions", type=Path, default=None,
                   help="the external evaluation's predictions folder (default: PREDICTIONS/external)")
    p.add_argument("--localize", type=Path, default=None,
                   help="the localisation metrics folder (metrics/localize, from evaluate): the \"Where it looks\" "
                        "section")
    p.add_argument("--heatmaps", type=Path, default=None,
                   help="the heatmaps folder (heatmaps, from evaluate): the Grad-CAM overlay figure")
    p.add_argument("--subgroups", type=Path, default=None,
                   help="the subgroups stage's metrics/subgroups.json: \"Whom it fails\" must show its numbers")
    p.add_argument("--out", type=Path, default=Path("reports/report.md"))

    p = stage("experiments", _experiments, "render DVC experiments (the loss × CLAHE grid) into one comparison, each "
                                           "arm against the baseline on the same test patients")
    p.add_argument("--exp-show", type=Path, default=None, metavar="JSON",
                   help="`dvc exp show --json` output (a file, or - for stdin; default: run it in --repo)")
    p.add_argument("--repo", type=Path, default=Path("."),
                   help="git repository holding the experiments' commits, read for their predictions")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="the arm the others are compared with (default: the one with the baseline commit's params)")
    p.add_argument("--coverage", type=Path, default=Path("metrics/coverage.json"),
                   help="the coverage stage's output, which chooses the interval method (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("reports/experiments.md"))
    p.add_argument("--summary", type=Path, default=None,
                   help="the arms' calibration as JSON, for the report's --grid (default: --out with .json)")

    p = stage("compare", _compare, "paired patient-bootstrap intervals of head - base mean AUROC per seed and for "
                                   "the ensemble, as a Markdown block (for a pull-request comment)")
    p.add_argument("--base", default=None, metavar="REV", help="git revision whose committed predictions/ is the base")
    p.add_argument("--base-dir", type=Path, default=None, help="a predictions folder to use as the base instead")
    p.add_argument("--head", type=Path, default=Path("predictions"), help="the head's predictions folder")
    p.add_argument("--repo", type=Path, default=Path("."), help="git repository to read --base from")
    p.add_argument("--splits", type=Path, default=SPLITS,
                   help="the split whose test list both sides' predictions must match (default: %(default)s)")
    p.add_argument("--coverage", type=Path, default=Path("metrics/coverage.json"),
                   help="the coverage stage's output, which chooses the interval method (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("-"), help="Markdown file (default: - for standard output)")

    p = stage("check-params", _check_params, "validate params.yaml (and a profile laid over it) and exit: run it "
                                             "before any dvc command, which reads params.yaml with no limits")
    p.add_argument("--profile", type=Path, default=None, help="a profile (e.g. configs/nih-study.yaml) to check too")

    p = sub.add_parser("profile", help="apply a profile (only the keys it changes) with `dvc exp run --set-param`",
                       description="Validate params.yaml + PROFILE with the schema and print the --set-param "
                                   "overrides that apply it; with --run, run `dvc exp run` with them (arguments "
                                   "after -- go to dvc).")
    p.add_argument("profile", type=Path, help="a YAML file of the parameters to change, e.g. configs/nih-study.yaml")
    p.add_argument("--run", action="store_true", help="run `dvc exp run` with the overrides")
    p.add_argument("dvc_args", nargs="*", help="extra arguments for `dvc exp run` (after --)")
    p.set_defaults(func=None)
    return parser


def _run_stage(args: argparse.Namespace) -> int:
    if args.stage == "profile":
        from cxrstudy import profile

        return profile.run(args.profile, args.params, args.run, args.dvc_args)
    params = load_params(args.params)
    numerics.pin(params.numerics)
    if args.stage in STAGES:
        sweep_tree(*(folder for folder in OUTPUT_FOLDERS if folder.is_dir()))
    args.func(params, args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_stage(args)
    except (InputError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno in DISK_FULL:
            where = err.filename or "an output"
            print(f"error: {where}: {err.strerror} while writing it; nothing was replaced (its earlier version, if "
                  "any, is intact): free some space and re-run the stage", file=sys.stderr)
            return 1
        if isinstance(err, OutputError):
            print(f"error: {err.filename}: cannot write this output there ({err.strerror}); nothing was replaced (its "
                  "earlier version, if any, is intact): make its folder writable, or choose another output path",
                  file=sys.stderr)
            return 1
        raise
    except Interrupted as err:
        print(f"interrupted: {err}; the last completed epoch is checkpointed, re-run the stage to resume",
              file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("interrupted by SIGINT: nothing was replaced (the stage's earlier output, if any, is intact); re-run "
              "the stage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
