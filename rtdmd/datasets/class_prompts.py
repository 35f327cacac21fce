"""Class-label "prompts" of the analytic world."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from rtdmd.registry import DATASETS


@DATASETS.register_module()
class ClassPromptDataset(Dataset):
    """``num_classes * samples_per_class`` items ``{'prompt': class_id, 'index': i}``.

    Item ``i`` has class ``i // samples_per_class``, so an evaluation split holds exactly
    ``samples_per_class`` samples of every class.

    Args:
        num_classes: number of classes; or give ``world`` (the config's top-level mixture) and
            the count is taken from its ``class_weights``, so a changed world needs no edit here.
        samples_per_class: items per class.
    """

    def __init__(self, num_classes: int | None = None, samples_per_class: int = 1,
                 world: dict | None = None) -> None:
        if (num_classes is None) == (world is None):
            raise ValueError('ClassPromptDataset needs exactly one of num_classes and world')
        if world is not None:
            num_classes = len(world['class_weights'])
        if num_classes < 1 or samples_per_class < 1:
            raise ValueError('num_classes and samples_per_class must be >= 1, got '
                             f'{num_classes} and {samples_per_class}')
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.metainfo = dict(num_classes=num_classes)

    def __len__(self) -> int:
        return self.num_classes * self.samples_per_class

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return {'prompt': index // self.samples_per_class, 'index': index}
