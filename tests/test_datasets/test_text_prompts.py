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


def test_undecodable_file_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / 'latin1.txt'
    path.write_bytes('a cat\nun caf\xe9\n'.encode('latin-1'))
    with pytest.raises(PromptFileError, match=r'latin1.txt:2: not valid UTF-8 \(byte 0xe9 at '
                                              r'column 7\)'):
        TextPromptDataset(str(path))


def test_empty_string_prompt_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / 'blank.jsonl'
    path.write_text(json.dumps({'prompt': 'a'}) + '\n' + json.dumps({'prompt': '  '}) + '\n')
    with pytest.raises(PromptFileError, match=r'blank.jsonl:2: the prompt is an empty string'):
        TextPromptDataset(str(path))


@pytest.mark.parametrize('bad', [0, -1, 2.5, True])
def test_max_prompts_that_leaves_nothing_or_cuts_oddly_fails_at_build(bad: object) -> None:
    """0 used to build an empty dataset (an infinite sampler then waits forever); -1 silently
    dropped the last prompt."""
    with pytest.raises(PromptFileError, match='max_prompts must be None'):
        TextPromptDataset('pickscore_train_subset.txt', max_prompts=bad)
    with pytest.raises(PromptFileError, match='max_prompts must be None'):
        TextPromptDataset(benchmark='drawbench', max_prompts=bad)


def test_benchmark_section_and_suite_reject_zero_prompts() -> None:
    from rtdmd.evaluation.suites import BenchmarkConfigError, check_benchmark_config, suite_prompts

    bench = dict(rewards=dict(s=dict(type='ImageStatsReward')),
                 suites=dict(d=dict(prompts='drawbench', rewards=['s'])), max_prompts=0)
    with pytest.raises(BenchmarkConfigError, match='benchmark.max_prompts'):
        check_benchmark_config(bench, ['d'])
    with pytest.raises(PromptFileError, match='max_prompts'):
        suite_prompts(dict(prompts='drawbench'), 0)
    assert len(suite_prompts(dict(prompts='drawbench'), 3)) == 3
