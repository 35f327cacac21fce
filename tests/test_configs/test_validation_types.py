"""Config problems found before any work: value types, hook arguments, nested dict keys,
command-line type changes, and pipelines inherited from anywhere on disk."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rtdmd.apis.stages import check_stage_options, declaring_file, stage_config
from rtdmd.utils.config import ConfigError, load_config
from tests.conftest import REPO

STAGE1 = str(REPO / 'configs/ac_dmd/toy2d_4step.py')
PIPELINE = str(REPO / 'configs/rtdmd/toy2d_4step.py')


@pytest.mark.parametrize('option, message', [
    ({'optim_wrapper.generator.optimizer.lr': 'abc'},
     "optim_wrapper.generator.optimizer.lr: expected float or int, got str 'abc'"),
    ({'train_cfg.max_iters': 'ten'}, "train_cfg.max_iters: expected int, got str 'ten'"),
    ({'model.fake_update_ratio': 2.5}, 'model.fake_update_ratio: expected int, got float 2.5'),
    ({'model.matching.sub_interval': 'yes'},
     "model.matching.sub_interval: expected bool, got str 'yes'"),
    ({'default_hooks.checkpoint.intervall': 3},
     "default_hooks.checkpoint.intervall: 'intervall' is not an argument of SafeCheckpointHook"),
    ({'default_hooks.rng_state.every': 3},
     "default_hooks.rng_state.every: 'every' is not an argument of RNGStateHook"),
    ({'backbone.init_fit.iter': 3}, "backbone.init_fit.iter: 'iter' is not a key of init_fit"),
    ({'model.matching.renoise.ofset': 3},
     "model.matching.renoise.ofset: 'ofset' is not a key of renoise"),
])
def test_stage1_problems_name_the_key(option: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(STAGE1, option)
    assert message in str(info.value)


@pytest.mark.parametrize('option, message', [
    ('rtdmd:model.subgrpo.range_endd=3', "stage rtdmd: model.subgrpo.range_endd: 'range_endd' "
                                        'is not a key of subgrpo'),
    ('rtdmd:model.rewards.main.wieght=2', "model.rewards.main.wieght: 'wieght' is not a key"),
    ('rtdmd:model.group_size=four', "model.group_size: expected int, got str 'four'"),
])
def test_stage2_problems_are_found_before_stage1_trains(option: str, message: str) -> None:
    from mmengine.config import Config

    cfg = Config.fromfile(PIPELINE)
    cfg.work_dir = 'unused'
    stage, _, rest = option.partition(':')
    key, _, value = rest.partition('=')
    with pytest.raises(ConfigError) as info:
        check_stage_options(cfg, {f'{stage}:{key}': value})
    assert message in str(info.value)


def test_mmengine_checkpoint_hook_kwargs_are_checked_too() -> None:
    """mmengine's hook swallows **kwargs and crashes at its first save with them."""
    with pytest.raises(ConfigError, match="'intervall' is not an argument of CheckpointHook"):
        load_config(STAGE1, {'default_hooks.checkpoint.type': 'CheckpointHook',
                             'default_hooks.checkpoint.intervall': 3})


def _valid_keys(error: BaseException) -> list[str]:
    return ast.literal_eval(re.search(r'valid: (\[.*?\])', str(error)).group(1))


def test_dict_arg_keys_match_what_the_classes_accept(tiny_backbone_cfg: dict) -> None:
    """Each declared key set is what the constructor itself accepts: a bogus key is refused at
    build time with exactly the declared keys as the valid ones."""
    from rtdmd.models.backbones.diffusers_base import DiffusersBackbone
    from rtdmd.models.backbones.toy import GaussianMixtureBackbone
    from rtdmd.models.distillers.matching import RandomStopMatching
    from rtdmd.models.distillers.rtdmd import RTDMDDistiller
    from rtdmd.registry import LOSSES, MODELS

    with pytest.raises(TypeError) as info:
        LOSSES.build(dict(type='RandomStopMatching', fake_loss=dict(type='AmbientDSMLoss'),
                          renoise={'bogus': 1}))
    assert sorted(_valid_keys(info.value)) == sorted(RandomStopMatching.dict_arg_keys['renoise'])
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(tiny_backbone_cfg, init_fit={'bogus': 1}))
    assert sorted(_valid_keys(info.value)) == sorted(
        GaussianMixtureBackbone.dict_arg_keys['init_fit'])
    stage2 = dict(type='RTDMDDistiller', backbone=tiny_backbone_cfg,
                  sampler=dict(type='CPSSampler'),
                  rewards=dict(main=dict(scorer=dict(type='LinearReward', direction=[1, 0]))))
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(stage2, subgrpo={'bogus': 1}))
    assert sorted(_valid_keys(info.value)) == sorted(RTDMDDistiller.dict_arg_keys['subgrpo'])
    with pytest.raises(ValueError, match=r'dict\(scorer=..., weight=...\)'):
        MODELS.build(dict(stage2, rewards=dict(main=dict(scorer=stage2['rewards']['main'][
            'scorer'], bogus=1))))
    assert RTDMDDistiller.dict_arg_keys['rewards'] == {'*': ('scorer', 'weight')}
    assert set(DiffusersBackbone.dict_arg_keys['lora']) == {'rank', 'alpha', 'init',
                                                            'target_modules'}


def test_changing_a_type_drops_the_base_keys_it_does_not_take_and_keeps_the_users() -> None:
    cfg = load_config(PIPELINE, {'reward.type': 'QuadraticReward', 'reward.center': [1, 1]})
    assert dict(cfg.reward) == dict(type='QuadraticReward', center=[1, 1])
    assert cfg.model.rewards.main.scorer.type == 'QuadraticReward'  # ${reward} follows
    # A key the user set is kept, so a wrong one is still reported.
    with pytest.raises(ConfigError, match="reward.direction: 'direction' is not an argument"):
        load_config(PIPELINE, {'reward.type': 'QuadraticReward', 'reward.center': [1, 1],
                               'reward.direction': [1, 0]})


def test_every_stage_follows_a_command_line_type_change() -> None:
    from mmengine.config import Config

    cfg = Config.fromfile(PIPELINE)
    cfg.work_dir = 'unused'
    options = {'reward.type': 'QuadraticReward', 'reward.center': [1, 1]}
    check_stage_options(cfg, options)
    sub = stage_config(cfg, {'name': 'dm_only'}, options)
    assert sub.reward.type == 'QuadraticReward' and 'direction' not in sub.reward


def test_a_key_below_a_plain_value_is_refused_with_both_names() -> None:
    """``model.matching=None`` and a stage's ``model.matching.type`` cannot both apply; the
    error names the key and its parent instead of mmengine's bare ``TypeError``."""
    with pytest.raises(ConfigError, match=r"model.matching.type: cannot set a key below "
                                          r"'model.matching', which the options set it to None"):
        load_config(STAGE1, {'model.matching': None, 'model.matching.type': 'FinalStepMatching'})
    with pytest.raises(ConfigError, match=r"model.fake_update_ratio.x: .* the config has 5"):
        load_config(STAGE1, {'model.fake_update_ratio.x': 1})
    cfg = load_config(STAGE1, {'model.matching': dict(type='FinalStepMatching'),
                               'model.matching.teacher_guidance': 2.0})  # a dict: fine
    assert cfg.model.matching.teacher_guidance == 2.0


def test_a_leaf_outside_configs_inherits_the_main_job(tmp_path: Path) -> None:
    """Stage config paths resolve against the file that declares them, not the leaf."""
    leaf = tmp_path / 'my_experiment.py'
    leaf.write_text(f"_base_ = ['{PIPELINE}']\nreward = dict(direction=[1.0, 0.0])\n")
    cfg = load_config(str(leaf))
    cfg.work_dir = str(tmp_path / 'work')
    assert declaring_file(str(leaf), 'stages') == PIPELINE
    check_stage_options(cfg, {})
    ac_dmd = stage_config(cfg, dict(cfg.stages[0]))
    assert ac_dmd.filename == STAGE1  # '../ac_dmd/toy2d_4step.py' of configs/rtdmd/
    rtdmd = stage_config(cfg, {'name': 'rtdmd'})  # a stage of the leaf's own file
    assert rtdmd.filename == str(leaf) and rtdmd.reward.direction == [1.0, 0.0]


def test_a_plain_seed_option_reaches_every_stage(tmp_path: Path) -> None:
    """`randomness.seed=N` reseeds stages with their own file (ac_dmd, dmd2) as well as the
    pipeline's; an option of another key reaches only the pipeline's own-file stages."""
    cfg = load_config(PIPELINE, {'randomness.seed': 7})
    cfg.work_dir = str(tmp_path / 'work')
    options = {'randomness.seed': 7, 'train_cfg.max_iters': 3}
    ac_dmd = stage_config(cfg, dict(cfg.stages[0]), options)
    rtdmd = stage_config(cfg, {'name': 'rtdmd'}, options)
    assert ac_dmd.filename == STAGE1 and ac_dmd.randomness.seed == 7
    assert rtdmd.randomness.seed == 7 and rtdmd.train_cfg.max_iters == 3
    assert ac_dmd.train_cfg.max_iters != 3


@pytest.mark.parametrize('content, message', [
    (b'a cat\nun caf\xe9\n', 'prompts.txt:2: not valid UTF-8'),
    (b'\n  \n', 'holds no prompt (empty file)'),
])
def test_a_bad_prompt_file_of_a_later_stage_stops_the_run_before_any_work(
        tmp_path: Path, content: bytes, message: str) -> None:
    from mmengine.config import Config

    from rtdmd.apis.pipeline import check_pipeline

    prompts = tmp_path / 'prompts.txt'
    prompts.write_bytes(content)
    cfg = Config.fromfile(PIPELINE)
    cfg.work_dir = str(tmp_path / 'work')
    option = {'rtdmd:train_dataloader.dataset': dict(type='TextPromptDataset', path=str(prompts))}
    with pytest.raises(ConfigError, match='stage rtdmd: train_dataloader.dataset: .*'
                       + re.escape(message)):
        check_pipeline(cfg, option)
