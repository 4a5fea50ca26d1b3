"""Command line: one sub-command per DVC stage (`python -m cxrstudy <stage> --help`), and `profile`.

Every stage validates the whole `params.yaml` first, then pins the numerics (`cxrstudy.numerics`) before its module,
and with it torch, NumPy or OpenCV, is imported. Bad input exits with status 2 and a message that names the
parameter, file or row at fault; a full disk exits with status 1 and names the output it could not write (the
earlier output is left as it was); an interrupted training exits 128 + the signal number after its last checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrstudy import numerics
from cxrstudy.errors import InputError, Interrupted, TrainingError
from cxrstudy.params import DEFAULT_PARAMS, Params, load_params

RAW = Path("data/raw")
PROCESSED = Path("data/processed")
SPLITS = Path("data/splits")


def _manifest(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import manifest

    manifest.run(p, a.out)


def _ingest(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import ingest

    ingest.run(p, a.out, workers=a.workers)


def _preprocess(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import preprocess

    preprocess.run(p, a.raw, a.out)


def _split(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import split

    split.run(p, a.raw, a.out, a.processed)


def _check_seed(p: Params, seed: int) -> None:
    if seed not in p.seeds:
        raise InputError(f"--seed {seed}: not in params.yaml seeds {p.seeds}; add it there first")


def _train(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import train

    _check_seed(p, a.seed)
    train.run(p, a.seed, a.raw, a.processed, a.splits, a.out or Path(f"models/seed_{a.seed}"),
              a.plots or Path(f"plots/train/seed_{a.seed}.csv"),
              a.checkpoints or Path(f"checkpoints/seed_{a.seed}"))


def _evaluate(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import evaluate

    _check_seed(p, a.seed)
    evaluate.run(p, a.seed, a.raw, a.processed, a.splits, a.model or Path(f"models/seed_{a.seed}"),
                 a.metrics or Path(f"metrics/eval/seed_{a.seed}.json"),
                 a.predictions or Path(f"predictions/seed_{a.seed}.csv"))


def _report(p: Params, a: argparse.Namespace) -> None:
    from cxrstudy import report

    if a.compare is not None:
        report.run_comparison(p, a.compare, a.out or Path("reports/comparison.md"))
        return
    report.run(p, a.metrics, a.splits, a.out or Path("reports/report.md"), predictions_dir=a.predictions,
               history_dir=a.history, raw_dir=a.raw, processed_dir=a.processed, figures_dir=a.figures,
               plots_dir=a.plots, summary_file=a.summary)


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

    p = stage("ingest", _ingest, "build data/raw in NIH's layout from the configured source")
    p.add_argument("--out", type=Path, default=RAW)
    p.add_argument("--workers", type=int, default=2, help="processes drawing the phantom (default: %(default)s)")

    p = stage("preprocess", _preprocess, "CLAHE and resize every image into one uint8 array")
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
    p.add_argument("--out", type=Path, default=None,
                   help="report file (default: reports/report.md, or reports/comparison.md with --compare)")
    p.add_argument("--compare", type=Path, default=None, metavar="EXP_JSON",
                   help="compare DVC experiments from `dvc exp show --json` output (a file, or - for stdin)")

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
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = err.filename or "an output"
        print(f"error: {where}: {err.strerror} while writing it; nothing was replaced (its earlier version, if any, "
              "is intact): free some space and re-run the stage", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"interrupted: {err}; the last completed epoch is checkpointed, re-run the stage to resume",
              file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
