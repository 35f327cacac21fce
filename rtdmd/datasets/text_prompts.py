"""Text prompt files: ``.txt`` (one prompt per line) or ``.jsonl`` (one object per line)."""

from __future__ import annotations

import json
import os.path as osp
from typing import Any

from mmengine.registry import FUNCTIONS
from torch.utils.data import Dataset

from rtdmd.registry import DATASETS

PACKAGE_PROMPTS = osp.join(osp.dirname(__file__), 'prompts')


class PromptFileError(ValueError):
    """A prompt file is missing, empty or malformed."""


def resolve_prompt_file(path: str) -> str:
    """``path`` as given, or a file shipped in ``rtdmd/datasets/prompts/`` by that name."""
    if osp.isfile(path):
        return path
    shipped = osp.join(PACKAGE_PROMPTS, path)
    if osp.isfile(shipped):
        return shipped
    raise PromptFileError(f'prompt file {path!r} not found (neither as a path nor among the '
                          f'shipped sets in {PACKAGE_PROMPTS})')


def read_prompt_file(path: str, require_metadata: bool = False) -> list[dict[str, Any]]:
    """Items ``{'prompt': str, 'metadata': dict}``; errors name the file and the line."""
    path = resolve_prompt_file(path)
    items = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if path.endswith('.jsonl'):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PromptFileError(f'{path}:{number}: not a JSON object ({err.msg})') \
                        from None
                if not isinstance(record, dict) or not isinstance(record.get('prompt'), str):
                    raise PromptFileError(f'{path}:{number}: expected an object with a string '
                                          f'"prompt"')
                metadata = {k: v for k, v in record.items() if k != 'prompt'}
                if require_metadata and not metadata:
                    raise PromptFileError(f'{path}:{number}: prompt has no metadata '
                                          f'(e.g. GenEval tag/include), which is required here')
                items.append({'prompt': record['prompt'], 'metadata': metadata})
            else:
                if require_metadata:
                    raise PromptFileError(f'{path}: metadata is required but a .txt file has none;'
                                          f' use a .jsonl file')
                items.append({'prompt': line, 'metadata': {}})
    if not items:
        raise PromptFileError(f'{path} holds no prompt (empty file)')
    return items


@DATASETS.register_module()
class TextPromptDataset(Dataset):
    """Prompts from a ``.txt`` or ``.jsonl`` file: items ``{'prompt', 'metadata', 'index'}``.

    Args:
        path: a file path, or the name of a set shipped in ``rtdmd/datasets/prompts/``.
        require_metadata: every line must carry metadata (GenEval-style rewards need it).
        max_prompts: keep only the first this many (``None``: all).
    """

    def __init__(self, path: str, require_metadata: bool = False,
                 max_prompts: int | None = None) -> None:
        self.items = read_prompt_file(path, require_metadata)[:max_prompts]
        self.metainfo = dict(path=path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {'prompt': item['prompt'], 'metadata': item['metadata'], 'index': index}


@FUNCTIONS.register_module()
def collate_prompts(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """One list per key (``collate_fn=dict(type='collate_prompts')``): mmengine's
    ``pseudo_collate`` fails on GenEval metadata, whose ``include`` lists differ in length."""
    return {key: [item[key] for item in batch] for key in batch[0]}
