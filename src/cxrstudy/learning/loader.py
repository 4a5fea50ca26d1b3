"""Training and evaluation data: processed images + labels for one split part, as a torch Dataset."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cxrstudy.data.dataset import read_info, read_table, targets
from cxrstudy.data.shards import Processed, load_processed
from cxrstudy.data.split import read_list
from cxrstudy.errors import InputError
from cxrstudy.params import AugmentParams


@dataclass(frozen=True)
class SplitData:
    """One set of images: rows into the processed images, their targets (NaN: masked), names and patients, and
    the names of the target columns (the dataset's label space)."""

    rows: np.ndarray
    labels: np.ndarray
    names: list[str]
    patients: np.ndarray
    label_names: tuple[str, ...]


def select(table: pd.DataFrame, processed: Processed, names: list[str], labels: tuple[str, ...], uncertain: str,
           where: str) -> SplitData:
    """The images `names` (in that order) as a `SplitData`; `where` names the list in errors."""
    row_of = {n: i for i, n in enumerate(processed.names)}
    missing = [n for n in names if n not in row_of]
    if missing:
        raise InputError(f"{where}: {len(missing)} image(s) not among the processed images, e.g. {missing[:5]}; "
                         "re-run preprocess")
    rows = table.set_index("image").loc[names].reset_index()
    return SplitData(rows=np.array([row_of[n] for n in names], dtype=np.int64),
                     labels=targets(rows, labels, uncertain), names=list(names),
                     patients=rows["patient"].to_numpy(dtype=str), label_names=labels)


def load_parts(raw_dir: Path, processed_dir: Path, splits_dir: Path,
               parts: tuple[str, ...]) -> tuple[Processed, dict[str, SplitData]]:
    """The processed images (memory-mapped) and the named parts ('train', 'val', 'test') of the split, with targets
    from the dataset contract's table and policy.

    The label table and the processed index are read once, whatever the number of parts.
    """
    images = load_processed(processed_dir)
    info = read_info(raw_dir)
    table = read_table(raw_dir, info)
    out = {part: select(table, images, read_list(splits_dir / f"{part}.txt"), info.labels, info.uncertain,
                        str(splits_dir / f"{part}.txt")) for part in parts}
    return images, out


def load_part(raw_dir: Path, processed_dir: Path, splits_dir: Path, part: str) -> tuple[Processed, SplitData]:
    """The processed images (memory-mapped) and one `part` of the split."""
    images, parts = load_parts(raw_dir, processed_dir, splits_dir, (part,))
    return images, parts[part]


def train_transform(size: int, cfg: AugmentParams) -> v2.Transform:
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(cfg.crop_scale_min, 1.0), ratio=(0.9, 1.1),
                                                      antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.brightness or cfg.contrast:
        steps.append(v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast))
    return v2.Compose(steps)


def eval_transform(size: int, stored: int) -> v2.Transform | None:
    return None if size == stored else v2.Resize(size, antialias=True)


class XrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """uint8 images (1 × H × W) and float targets (one per label; NaN: masked), optionally transformed."""

    def __init__(self, images: Processed, part: SplitData, transform: v2.Transform | None,
                 labels: np.ndarray | None = None) -> None:
        self.images = images
        self.part = part
        self.transform = transform
        self.labels = torch.from_numpy(part.labels if labels is None else labels)

    def __len__(self) -> int:
        return len(self.part.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[self.part.rows[i]]))[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: XrayDataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                num_workers: int, pin_memory: bool,
                sampler: Iterable[int] | None = None) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A training loader (`shuffle`: a new order every epoch, drawn from `generator` or by `sampler`, e.g. a
    `DistributedSampler`; the last incomplete batch dropped), or an evaluation loader (every item in order, or the
    indices `sampler` lists: one rank's shard)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=shuffle,
        generator=generator,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 batch (B × 1 × H × W) -> float in [0, 1] on `device`, in the chosen memory format."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
