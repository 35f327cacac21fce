import json
from pathlib import Path

import pytest

from rtdmd.datasets import PromptFileError, TextPromptDataset


def test_shipped_sets_load_by_name() -> None:
    subset = TextPromptDataset('pickscore_train_subset.txt')
    assert len(subset) == 256 and subset[0]['index'] == 0 and subset[0]['prompt']
    geneval = TextPromptDataset('geneval_metadata.jsonl', require_metadata=True)
    assert len(geneval) == 2212  # 553 prompts x 4
    assert {'tag', 'include'} <= set(geneval[0]['metadata'])


def test_empty_file_and_malformed_line_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n \n')
    with pytest.raises(PromptFileError, match='empty file'):
        TextPromptDataset(str(empty))
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({'prompt': 'a cat'}) + '\n{"prompt": oops}\n')
    with pytest.raises(PromptFileError, match=r'bad.jsonl:2: not a JSON object'):
        TextPromptDataset(str(bad))


def test_missing_metadata_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / 'meta.jsonl'
    path.write_text(json.dumps({'prompt': 'a', 'tag': 'x'}) + '\n' + json.dumps({'prompt': 'b'}))
    with pytest.raises(PromptFileError, match=r'meta.jsonl:2: prompt has no metadata'):
        TextPromptDataset(str(path), require_metadata=True)
    with pytest.raises(PromptFileError, match='not found'):
        TextPromptDataset(str(tmp_path / 'nope.txt'))
