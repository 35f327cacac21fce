"""Text prompt files: ``.txt`` (one prompt per line) or ``.jsonl`` (one object per line)."""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Callable
from typing import Any, NamedTuple

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


def check_max_prompts(max_prompts: int | None, where: str = 'max_prompts') -> None:
    """``None`` or an int >= 1 (0 would leave nothing to sample and a sampler waiting forever).

    Raises:
        PromptFileError: naming ``where``.
    """
    if max_prompts is None:
        return
    if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
        raise PromptFileError(f'{where} must be None (all prompts) or an int >= 1, got '
                              f'{max_prompts!r}')


def _lines(path: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line; undecodable bytes name the line and column."""
    with open(path, 'rb') as f:
        raw = f.read()
    out = []
    for number, data in enumerate(raw.split(b'\n'), start=1):
        try:
            out.append((number, data.decode('utf-8')))
        except UnicodeDecodeError as err:
            raise PromptFileError(f'{path}:{number}: not valid UTF-8 (byte 0x{data[err.start]:02x} '
                                  f'at column {err.start + 1}); save the file as UTF-8') from None
    return out


def read_prompt_file(path: str, require_metadata: bool = False,
                     validate: Callable[[dict[str, Any], str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Items ``{'prompt': str, 'metadata': dict}``; errors name the file and the line.

    Blank lines of a ``.txt`` file are skipped; an empty ``"prompt"`` of a ``.jsonl`` line, a
    file that is not UTF-8 or one without any prompt is an error.
    ``validate(item, 'file:line')`` (optional) checks each item and raises ``PromptFileError``.
    """
    path = resolve_prompt_file(path)
    items = []
    for number, line in _lines(path):
        line = line.strip()
        if not line:
            continue
        if path.endswith('.jsonl'):
            items.append(_jsonl_item(line, f'{path}:{number}', require_metadata))
        else:
            if require_metadata:
                raise PromptFileError(f'{path}: metadata is required but a .txt file has none;'
                                      f' use a .jsonl file')
            items.append({'prompt': line, 'metadata': {}})
        if validate is not None:
            validate(items[-1], f'{path}:{number}')
    if not items:
        raise PromptFileError(f'{path} holds no prompt (empty file)')
    return items


def _jsonl_item(line: str, where: str, require_metadata: bool) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptFileError(f'{where}: not a JSON object ({err.msg})') from None
    if not isinstance(record, dict) or not isinstance(record.get('prompt'), str):
        raise PromptFileError(f'{where}: expected an object with a string "prompt"')
    if not record['prompt'].strip():
        raise PromptFileError(f'{where}: the prompt is an empty string')
    metadata = {k: v for k, v in record.items() if k != 'prompt'}
    if require_metadata and not metadata:
        raise PromptFileError(f'{where}: prompt has no metadata (e.g. GenEval tag/include), '
                              f'which is required here')
    return {'prompt': record['prompt'], 'metadata': metadata}


def _field_error(where: str, field: str, why: str) -> PromptFileError:
    return PromptFileError(f'{where}: field {field!r} {why}')


def _check_objects(objects: Any, where: str, field: str, allow_empty: bool) -> None:
    if not isinstance(objects, list) or not (objects or allow_empty):
        raise _field_error(where, field, 'must be a non-empty list of objects' if not allow_empty
                           else 'must be a list of objects')
    for i, obj in enumerate(objects):
        name = f'{field}[{i}]'
        if not isinstance(obj, dict):
            raise _field_error(where, name, 'must be an object')
        if not isinstance(obj.get('class'), str) or not obj['class']:
            raise _field_error(where, f'{name}.class', 'is missing or not a non-empty string')
        count = obj.get('count')
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise _field_error(where, f'{name}.count', 'is missing or not an integer >= 0')
        if 'color' in obj and not isinstance(obj['color'], str):
            raise _field_error(where, f'{name}.color', 'must be a string')
        position = obj.get('position')
        if 'position' in obj and not (isinstance(position, list) and len(position) == 2
                                      and isinstance(position[0], str)
                                      and isinstance(position[1], int)):
            raise _field_error(where, f'{name}.position',
                               'must be [relation, index of the reference object]')


def validate_geneval(item: dict[str, Any], where: str) -> None:
    """GenEval metadata: ``tag``, ``include`` [{class, count, color?, position?}], ``exclude``?"""
    metadata = item['metadata']
    if not isinstance(metadata.get('tag'), str) or not metadata['tag']:
        raise _field_error(where, 'tag', 'is missing or not a non-empty string')
    if 'include' not in metadata:
        raise _field_error(where, 'include', 'is missing')
    _check_objects(metadata['include'], where, 'include', allow_empty=False)
    if 'exclude' in metadata:
        _check_objects(metadata['exclude'], where, 'exclude', allow_empty=True)


def validate_geneval2(item: dict[str, Any], where: str) -> None:
    """GenEval2: ``vqa_list`` [[question, answer], ...] (the VQA atoms), ``skills`` alongside."""
    vqa = item['metadata'].get('vqa_list')
    if not isinstance(vqa, list) or not vqa:
        raise _field_error(where, 'vqa_list', 'is missing or not a non-empty list')
    for i, pair in enumerate(vqa):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise _field_error(where, f'vqa_list[{i}]', 'must be [question, answer] strings')
    skills = item['metadata'].get('skills')
    if skills is not None and (not isinstance(skills, list) or len(skills) != len(vqa)):
        raise _field_error(where, 'skills', 'must be a list as long as vqa_list')


def ocr_target(prompt: str) -> str | None:
    """The text to render: what lies between the first pair of double quotes (``None``: none)."""
    start = prompt.find('"')
    end = prompt.find('"', start + 1) if start >= 0 else -1
    return prompt[start + 1:end] if end > start else None


def validate_ocr(item: dict[str, Any], where: str) -> None:
    """An OCR prompt quotes its (non-empty) target text: ``... a sign saying "Open" ...``."""
    if not ocr_target(item['prompt']):
        raise PromptFileError(f'{where}: OCR prompt has no quoted target text ("...")')


class Benchmark(NamedTuple):
    file: str
    require_metadata: bool
    validate: Callable[[dict[str, Any], str], None] | None


# The benchmark prompt sets shipped in ``rtdmd/datasets/prompts/`` (see its README).
BENCHMARKS: dict[str, Benchmark] = {
    'drawbench': Benchmark('drawbench_test.txt', False, None),
    'geneval': Benchmark('geneval_metadata.jsonl', True, validate_geneval),
    'geneval2': Benchmark('geneval2_test.jsonl', True, validate_geneval2),
    'hpsv3': Benchmark('hpsv3_test.txt', False, None),
    'ocr': Benchmark('ocr_test.txt', False, validate_ocr),
    'pickscore_test': Benchmark('pickscore_test.txt', False, None),
    # The shapes world's held-out prompts, 16 per GenEval tag (ShapesPromptDataset('heldout',
    # per_tag=16), written out; a test keeps the two equal).
    'shapes': Benchmark('shapes_heldout.jsonl', True, validate_geneval),
}


def load_benchmark(name: str, max_prompts: int | None = None,
                   path: str | None = None) -> list[dict[str, Any]]:
    """Validated items of a benchmark (``path`` replaces its shipped file, e.g. in tests)."""
    if name not in BENCHMARKS:
        raise ValueError(f'unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}')
    check_max_prompts(max_prompts)
    bench = BENCHMARKS[name]
    items = read_prompt_file(path or bench.file, bench.require_metadata, bench.validate)
    return items[:max_prompts]


@DATASETS.register_module()
class TextPromptDataset(Dataset):
    """Prompts from a ``.txt`` or ``.jsonl`` file: items ``{'prompt', 'metadata', 'index'}``.

    Args:
        path: a file path, or the name of a set shipped in ``rtdmd/datasets/prompts/``.
        require_metadata: every line must carry metadata (GenEval-style rewards need it).
        max_prompts: keep only the first this many (``None``: all).
        benchmark: instead of ``path``, a name in ``BENCHMARKS`` (validated; its own metadata rule).
    """

    def __init__(self, path: str | None = None, require_metadata: bool = False,
                 max_prompts: int | None = None, benchmark: str | None = None) -> None:
        if (path is None) == (benchmark is None):
            raise ValueError('TextPromptDataset takes exactly one of path= and benchmark=')
        check_max_prompts(max_prompts, 'TextPromptDataset.max_prompts')
        if benchmark is not None:
            self.items = load_benchmark(benchmark, max_prompts)
            if require_metadata and not BENCHMARKS[benchmark].require_metadata:
                raise ValueError(f'benchmark {benchmark!r} carries no metadata; '
                                 f'require_metadata=True cannot hold')
            self.metainfo = dict(benchmark=benchmark, path=BENCHMARKS[benchmark].file)
            return
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
