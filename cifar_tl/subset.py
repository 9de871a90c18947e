"""A Subset of a source that keeps the dataset contract of ``cifar_tl.data`` (the source itself is never edited)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class Subset(torch.utils.data.Dataset):
    """Samples ``indices`` of a source, keeping the dataset contract (the source is not changed)."""

    def __init__(self, dataset, indices, transform=None, split: str | None = None):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        idx = np.asarray(self.indices, dtype=np.int64)
        self.split, self.transform = split or dataset.split, transform
        self.classes, self.class_to_idx = dataset.classes, getattr(dataset, "class_to_idx", None)
        self.targets = [int(dataset.targets[i]) for i in idx]
        self.coarse_classes, self.fine_to_coarse = dataset.coarse_classes, dataset.fine_to_coarse
        coarse = dataset.coarse_targets
        self.coarse_targets = None if coarse is None else [int(coarse[i]) for i in idx]
        self.data = None if dataset.data is None else dataset.data[idx]
        self.paths = None if dataset.paths is None else [dataset.paths[i] for i in idx]

    @property
    def samples(self) -> list[tuple[str, int]]:
        if self.paths is None:
            raise AttributeError("samples: only image folders have files")
        return list(zip(self.paths, self.targets))

    def raw_image(self, index: int):
        return self.data[index] if self.data is not None else self.dataset.raw_image(self.indices[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        img = self.raw_image(index)
        img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
        return (self.transform(img) if self.transform is not None else img), self.targets[index]
