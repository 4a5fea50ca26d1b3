"""The external stage: one seed's model tested at another site (`ingest.external`), on the findings the two label
spaces share.

A model holds at another hospital, or it does not (Zech et al. 2018: AUROC 0.931 at home, 0.815 elsewhere). The
external site's official test list (its `official_split`, or all its images when it has none) is predicted with the
model trained at the first site, and each finding both label spaces hold (`resources/label_map.csv`: NIH's Effusion is
CheXpert's Pleural Effusion) is scored with the external site's own labels, under its own uncertainty policy. The
predictions are saved under the model's names for the report, which sets internal and external AUROC side by side
with patient-bootstrap intervals. With `ingest.external: none` the metrics file says there is no external test set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cxrstudy import numerics
from cxrstudy.atomic import atomic_file, check_writable, sync
from cxrstudy.data.dataset import has_dataset, official_test_rows, read_info, read_table
from cxrstudy.data.shards import load_processed
from cxrstudy.errors import InputError
from cxrstudy.labels import shared_findings
from cxrstudy.learning.evaluate import _clean, positive_patients, write_predictions
from cxrstudy.learning.loader import XrayDataset, eval_transform, make_loader, select
from cxrstudy.learning.predict import (
    MODEL_FILE,
    load_trained,
    model_labels,
    pick_device,
    predict,
    read_trained,
    seed_everything,
    sigmoid,
)
from cxrstudy.metrics import per_class_auroc
from cxrstudy.params import Params


def no_external(seed: int, reason: str) -> dict[str, object]:
    return {"seed": seed, "external": None, "reason": reason}


def run(params: Params, seed: int, raw_dir: Path, external_raw: Path, external_processed: Path, model_dir: Path,
        metrics_file: Path, predictions_file: Path) -> None:
    """Stage entry point: test `model_dir/model.pt` on the external site's test list; write the metrics (DVC
    metrics) and the predictions, both or neither."""
    check_writable(metrics_file, predictions_file)
    if not has_dataset(external_raw):
        with atomic_file(metrics_file) as out, atomic_file(predictions_file) as preds:
            json.dump(no_external(seed, "no external test set (ingest.external: none)"), out, indent=2,
                      sort_keys=True)
            out.write("\n")
            preds.write("image,patient\n")
        print(f"external seed {seed}: no external test set (ingest.external: none) -> {metrics_file}")
        return
    cfg = params.train
    numerics.apply_threads(params.numerics)
    seed_everything(seed, cfg.deterministic)
    device = pick_device(cfg)
    home, away = read_info(raw_dir), read_info(external_raw)
    payload = read_trained(model_dir / MODEL_FILE)
    labels = model_labels(payload)
    shared = shared_findings(home.label_space, labels, away.label_space, away.labels)
    if not shared:
        raise InputError(f"{external_raw}: the external dataset ({away.name}, label space {away.label_space}) shares "
                         f"no finding with the model's ({home.label_space}: {', '.join(labels)}); see "
                         "resources/label_map.csv")
    table = read_table(external_raw, away)
    images = load_processed(external_processed)
    produced = set(images.names)
    test = table.iloc[official_test_rows(table)]
    names = [n for n in test["image"] if n in produced]
    if not names:
        raise InputError(f"{external_processed}: none of the external test images was processed; re-run preprocess")
    part = select(table, images, names, tuple(s.other for s in shared), away.uncertain, f"{external_raw} test list")
    model = load_trained(model_dir / MODEL_FILE).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(XrayDataset(images, part, eval_transform(cfg.image_size, images.size)),
                         params.evaluate.batch_size, shuffle=False, generator=None, num_workers=cfg.num_workers,
                         pin_memory=device.type == "cuda")
    logits, targets = predict(model, loader, device, cfg.channels_last, cfg.amp)
    columns = [labels.index(s.finding) for s in shared]
    probs = sigmoid(logits)[:, columns]
    ours = tuple(s.finding for s in shared)
    auroc = per_class_auroc(targets, probs)
    metrics = {
        "seed": seed,
        "external": {
            "source": away.source, "name": away.name, "site": away.site, "label_source": away.label_source,
            "official_test": away.official_test, "uncertain": away.uncertain,
            "findings": {s.finding: s.other for s in shared},
            "auroc": {n: _clean(v) for n, v in zip(ours, auroc, strict=True)},
            "auroc_mean": _clean(float(np.nanmean(auroc))) if not np.isnan(auroc).all() else None,
            "n_test": len(names), "test_patients": int(len(set(part.patients))),
            "test_positives": {n: int(v) for n, v in zip(ours, np.nansum(targets, axis=0), strict=True)},
            "test_positive_patients": positive_patients(ours, targets, part.patients),
            "masked": {n: int(v) for n, v in zip(ours, np.isnan(targets).sum(axis=0), strict=True)},
        },
        "environment": numerics.environment(params.numerics, device),
    }
    with atomic_file(metrics_file) as out, atomic_file(predictions_file) as preds:
        json.dump(metrics, out, indent=2, sort_keys=True)
        out.write("\n")
        write_predictions(preds, names, part.patients, targets, probs, ours)
        sync(out, preds)
    mean = metrics["external"]["auroc_mean"]  # type: ignore[index]
    print(f"external seed {seed} on {away.name}: mean AUROC {mean} over {len(shared)} shared finding(s), "
          f"{len(names)} images -> {metrics_file}")
