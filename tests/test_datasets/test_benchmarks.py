import json
import os.path as osp
from pathlib import Path

import pytest

from rtdmd.datasets import PromptFileError, TextPromptDataset
from rtdmd.datasets.text_prompts import (
    BENCHMARKS,
    PACKAGE_PROMPTS,
    load_benchmark,
    ocr_target,
    read_prompt_file,
)

# Non-empty lines, as the loader reads them. DrawBench and OCR have no final newline, so `wc -l`
# says 999 and 1017.
EXPECTED = {'drawbench': 1000, 'geneval': 2212, 'geneval2': 800, 'hpsv3': 1024, 'ocr': 1018,
            'pickscore_test': 2048, 'shapes': 96}


def test_every_benchmark_is_shipped_and_loads_with_its_count() -> None:
    assert set(BENCHMARKS) == set(EXPECTED)
    for name, count in EXPECTED.items():
        items = load_benchmark(name)
        assert len(items) == count, name
        assert all(item['prompt'].strip() for item in items), name
        assert load_benchmark(name, max_prompts=3) == items[:3]
    drawbench = [item['prompt'] for item in load_benchmark('drawbench')]
    assert len(set(drawbench)) == 200  # 200 prompts x 5 repeats
    assert len(read_prompt_file('geneval_object_names.txt')) == 80


def test_shipped_files_stay_small() -> None:
    files = [bench.file for bench in BENCHMARKS.values()] + ['geneval_object_names.txt']
    size = sum(osp.getsize(osp.join(PACKAGE_PROMPTS, f)) for f in files)
    assert size < 2 * 2**20, size


def test_metadata_of_the_shipped_sets() -> None:
    geneval = load_benchmark('geneval')
    assert {item['metadata']['tag'] for item in geneval} == {
        'single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr'}
    position = next(item for item in geneval if item['metadata']['tag'] == 'position')
    assert position['metadata']['include'][1]['position'][0] in {'left of', 'right of', 'above',
                                                                 'below'}
    geneval2 = load_benchmark('geneval2')[0]['metadata']
    assert geneval2['vqa_list'][0] == ['How many backpacks are in the image?', 'one']
    assert len(geneval2['skills']) == len(geneval2['vqa_list'])
    assert all(ocr_target(item['prompt']) for item in load_benchmark('ocr'))
    assert ocr_target(load_benchmark('ocr')[0]['prompt']) == 'Spring Collection 2024'


def test_dataset_takes_a_benchmark_strictly() -> None:
    dataset = TextPromptDataset(benchmark='geneval2', max_prompts=5)
    assert len(dataset) == 5 and dataset[0]['metadata']['vqa_list']
    assert dataset.metainfo == dict(benchmark='geneval2', path='geneval2_test.jsonl')
    with pytest.raises(ValueError, match='exactly one of path= and benchmark='):
        TextPromptDataset()
    with pytest.raises(ValueError, match='exactly one of path= and benchmark='):
        TextPromptDataset('pickscore_test.txt', benchmark='drawbench')
    with pytest.raises(ValueError, match=r"unknown benchmark 'parti'"):
        TextPromptDataset(benchmark='parti')
    with pytest.raises(ValueError, match='carries no metadata'):
        TextPromptDataset(benchmark='hpsv3', require_metadata=True)


def _jsonl(path: Path, records: list) -> str:
    path.write_text('\n'.join(r if isinstance(r, str) else json.dumps(r) for r in records) + '\n')
    return str(path)


GOOD = {'tag': 'two_object', 'prompt': 'a photo of a cat and a dog',
        'include': [{'class': 'cat', 'count': 1}, {'class': 'dog', 'count': 1}]}


def test_empty_file_and_malformed_json_line(tmp_path: Path) -> None:
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n  \n')
    with pytest.raises(PromptFileError, match='empty file'):
        load_benchmark('drawbench', path=str(empty))
    bad = _jsonl(tmp_path / 'bad.jsonl', [GOOD, GOOD, '{"prompt": "a cat", "tag": oops}'])
    with pytest.raises(PromptFileError, match=r'bad\.jsonl:3: not a JSON object'):
        load_benchmark('geneval', path=bad)


@pytest.mark.parametrize('change, line, field', [
    (lambda r: r.pop('include'), 2, "'include' is missing"),
    (lambda r: r.pop('tag'), 2, "'tag' is missing"),
    (lambda r: r.update(include=[]), 2, "'include' must be a non-empty list"),
    (lambda r: r['include'][1].pop('class'), 2, r"'include\[1\]\.class' is missing"),
    (lambda r: r['include'][0].update(count='two'), 2, r"'include\[0\]\.count'"),
    (lambda r: r['include'][0].update(position='left'), 2, r"'include\[0\]\.position'"),
    (lambda r: r.update(exclude=[{'class': 'cat'}]), 2, r"'exclude\[0\]\.count'"),
])
def test_geneval_field_errors_name_line_and_field(tmp_path: Path, change, line, field) -> None:
    broken = json.loads(json.dumps(GOOD))
    change(broken)
    path = _jsonl(tmp_path / 'geneval.jsonl', [GOOD, broken])
    with pytest.raises(PromptFileError, match=rf'geneval\.jsonl:{line}: field {field}'):
        load_benchmark('geneval', path=path)


def test_geneval_optional_fields_and_missing_metadata(tmp_path: Path) -> None:
    full = dict(GOOD, include=[{'class': 'cat', 'count': 1, 'color': 'red'},
                               {'class': 'dog', 'count': 1, 'position': ['left of', 0]}],
                exclude=[{'class': 'cat', 'count': 2}])
    assert len(load_benchmark('geneval', path=_jsonl(tmp_path / 'ok.jsonl', [GOOD, full]))) == 2
    bare = _jsonl(tmp_path / 'bare.jsonl', [GOOD, {'prompt': 'a cat'}])
    with pytest.raises(PromptFileError, match=r'bare\.jsonl:2: prompt has no metadata'):
        load_benchmark('geneval', path=bare)


def test_geneval2_needs_its_vqa_atoms(tmp_path: Path) -> None:
    good = {'prompt': 'two cats', 'atom_count': 2, 'skills': ['count', 'object'],
            'vqa_list': [['How many cats are in the image?', 'two'],
                         ['Are there any cats in the image?', 'Yes']]}
    path = _jsonl(tmp_path / 'g2.jsonl', [good, {'prompt': 'two cats', 'atom_count': 2}])
    with pytest.raises(PromptFileError, match=r"g2\.jsonl:2: field 'vqa_list' is missing"):
        load_benchmark('geneval2', path=path)
    path = _jsonl(tmp_path / 'g2.jsonl', [dict(good, vqa_list=[['only a question']])])
    with pytest.raises(PromptFileError, match=r"g2\.jsonl:1: field 'vqa_list\[0\]'"):
        load_benchmark('geneval2', path=path)


def test_ocr_line_without_quotes_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / 'ocr.txt'
    path.write_text('a sign saying "Open"\n\na sign saying nothing\n')
    with pytest.raises(PromptFileError, match=r'ocr\.txt:3: OCR prompt has no quoted target'):
        load_benchmark('ocr', path=str(path))
    path.write_text('a sign saying ""\n')
    with pytest.raises(PromptFileError, match=r'ocr\.txt:1: OCR prompt has no quoted target'):
        load_benchmark('ocr', path=str(path))


def test_ocr_target() -> None:
    assert ocr_target('a neon sign reading "OPEN 24/7" above a door') == 'OPEN 24/7'
    assert ocr_target('a mug with "Best Dad" and a card that says "Hi"') == 'Best Dad'
    assert ocr_target('a poster "Café Ünïcode"') == 'Café Ünïcode'
    assert ocr_target('a single " quote') is None
    assert ocr_target('no quotes at all') is None
    assert ocr_target('an empty "" pair') == ''
