"""Strict config validation: unknown top-level keys, types and constructor arguments fail."""

import argparse
import textwrap
from pathlib import Path

import pytest
from mmengine.config import DictAction

from rtdmd.registry import MODELS, SAMPLERS
from rtdmd.utils.config import EXTRA_TOP_LEVEL_KEYS, ConfigError, load_config, validate_config

# Throwaway types registered for this module only; names chosen not to clash with real ones.
_MODEL = 'ToyValidationModel'
_SAMPLER = 'ToyValidationSampler'
_ANYTHING = 'ToyValidationKwargsModel'


class ToyValidationSampler:
    def __init__(self, num_steps: int = 4, eta: float = 0.0) -> None:
        self.num_steps, self.eta = num_steps, eta


class ToyValidationModel:
    def __init__(self, sampler: dict, data_preprocessor: dict | None = None) -> None:
        self.sampler = sampler


class ToyValidationKwargsModel:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.fixture(scope='module', autouse=True)
def toy_types():
    MODELS.register_module(name=_MODEL, module=ToyValidationModel)
    MODELS.register_module(name=_ANYTHING, module=ToyValidationKwargsModel)
    SAMPLERS.register_module(name=_SAMPLER, module=ToyValidationSampler)
    yield
    MODELS._module_dict.pop(_MODEL)
    MODELS._module_dict.pop(_ANYTHING)
    SAMPLERS._module_dict.pop(_SAMPLER)


BASE = f"""
default_scope = 'rtdmd'
work_dir = 'work_dirs/toy'
_lr = 1e-3
model = dict(type='{_MODEL}', sampler=dict(type='{_SAMPLER}', num_steps=4))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=_lr),
                     clip_grad=dict(max_norm=1.0), paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10,
                        convert_to_iter_based=True)]
train_cfg = dict(by_epoch=False, max_iters=10)
default_hooks = dict(logger=dict(type='LoggerHook', interval=5),
                     checkpoint=dict(type='CheckpointHook', interval=5, by_epoch=False))
custom_hooks = [dict(type='mmengine.EMAHook', priority='ABOVE_NORMAL')]
visualizer = dict(type='Visualizer', vis_backends=[dict(type='TensorboardVisBackend')])
reward = dict(weights=dict(hps=1.0))
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def config_error(path: str, cfg_options: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, cfg_options)
    return info.value


def test_valid_config_with_base_and_list_override(tmp_path):
    write(tmp_path, 'base.py', BASE)
    leaf = write(
        tmp_path,
        'leaf.py',
        """
        _base_ = ['./base.py']
        optim_wrapper = dict(optimizer=dict(lr=2e-3))
    """,
    )
    # --cfg-options goes through mmengine's DictAction exactly as in tools/train.py.
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(
        ['--cfg-options', 'optim_wrapper.optimizer.betas=[0.9,0.99]', 'train_cfg.max_iters=3']
    )
    cfg = load_config(leaf, args.cfg_options)
    assert cfg.optim_wrapper.optimizer.lr == 2e-3
    assert list(cfg.optim_wrapper.optimizer.betas) == [0.9, 0.99]
    assert cfg.train_cfg.max_iters == 3
    assert cfg._lr == 1e-3  # helper variables are allowed and kept


def test_list_override_is_validated(tmp_path):
    path = write(tmp_path, 'base.py', BASE)
    cfg = load_config(path, {'custom_hooks': [dict(type='LoggerHook', interval=3)]})
    assert cfg.custom_hooks[0].interval == 3
    err = config_error(path, {'custom_hooks': [dict(type='LoggerHook', intervall=3)]})
    assert str(err).startswith(
        "custom_hooks[0].intervall: 'intervall' is not an argument of LoggerHook"
    )
    assert 'Did you mean: interval' in str(err)


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, 'cfg.py', BASE.replace('optim_wrapper =', 'optim_wraper ='))
    err = config_error(path)
    assert str(err) == ('optim_wraper: unknown top-level config key. Did you mean: optim_wrapper?')


def test_unknown_type_names_path_and_close_match(tmp_path):
    text = BASE.replace(f"type='{_SAMPLER}'", "type='ToyValidationSamplr'")
    path = write(tmp_path, 'cfg.py', text)
    err = config_error(path)
    # Suggestions are ranked by similarity, best first, at most three.
    assert str(err).startswith(
        "model.sampler.type: 'ToyValidationSamplr' is not a registered "
        f'type. Did you mean: {_SAMPLER}'
    )


def test_mistyped_argument_names_argument_class_and_parameter(tmp_path):
    path = write(tmp_path, 'cfg.py', BASE.replace('num_steps=4', 'num_step=4'))
    err = config_error(path)
    assert str(err).startswith(
        f"model.sampler.num_step: 'num_step' is not an argument of {_SAMPLER} ("
    )
    assert str(err).endswith('Did you mean: num_steps?')


def test_mistyped_torch_optimizer_argument(tmp_path):
    path = write(tmp_path, 'cfg.py', BASE.replace('lr=_lr', 'lr=_lr, weight_decy=0.1'))
    err = config_error(path)
    assert 'optim_wrapper.optimizer.weight_decy' in str(err)
    assert 'Did you mean: weight_decay?' in str(err)


def test_every_error_is_reported(tmp_path):
    text = (
        BASE.replace('optim_wrapper =', 'optim_wraper =')
        .replace('interval=5)', 'intervall=5)', 1)
        .replace("'TensorboardVisBackend'", "'TensorbordVisBackend'")
    )
    err = config_error(write(tmp_path, 'cfg.py', text))
    assert len(err.errors) == 3
    assert [e.split(':')[0] for e in err.errors] == [
        'optim_wraper',
        'default_hooks.logger.intervall',
        'visualizer.vis_backends[0].type',
    ]


def test_kwargs_constructors_and_scoped_names(tmp_path):
    # **kwargs: nothing can be said; 'scope.Name' and import paths resolve like Registry.get.
    text = BASE + textwrap.dedent(f"""
        model = dict(_delete_=True, type='{_ANYTHING}', anything=1)
        data_preprocessor = dict(type='mmengine.BaseDataPreprocessor')
        train_dataloader = dict(batch_size=2, sampler=dict(type='DefaultSampler', shuffle=True),
                                collate_fn=dict(type='default_collate'),
                                dataset=dict(type='mmengine.dataset.BaseDataset', ann_file=''))
    """)
    validate_config(load_config(write(tmp_path, 'ok.py', text)))
    bad = text.replace("ann_file=''", "ann_fil=''").replace("'mmengine.Base", "'mmengine.Bas")
    err = config_error(write(tmp_path, 'bad.py', bad))
    assert len(err.errors) == 2
    assert err.errors[0].startswith(
        "data_preprocessor.type: 'mmengine.BasDataPreprocessor' is not a registered type. "
        'Did you mean: BaseDataPreprocessor'
    )
    assert err.errors[1] == (
        "train_dataloader.dataset.ann_fil: 'ann_fil' is not an argument of "
        'mmengine.dataset.BaseDataset (mmengine.dataset.base_dataset.BaseDataset). '
        'Did you mean: ann_file?'
    )


def test_optim_wrapper_constructor_is_checked(tmp_path):
    text = BASE + "optim_wrapper = dict(constructor='DefaultOptimWraperConstructor')\n"
    err = config_error(write(tmp_path, 'cfg.py', text))
    assert str(err).startswith(
        "optim_wrapper.constructor: 'DefaultOptimWraperConstructor' is not a registered "
        'optimizer wrapper constructor. Did you mean: DefaultOptimWrapperConstructor'
    )


def test_new_style_config_imports_are_not_keys(tmp_path):
    path = write(
        tmp_path,
        'lazy.py',
        """
        from torch.optim import AdamW
        from mmengine.hooks import LoggerHook
        default_scope = 'rtdmd'
        optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type=AdamW, lr=1e-3))
        default_hooks = dict(logger=dict(type=LoggerHook, interval=5))
        evaluation = dict(num_prompts=8)
    """,
    )
    load_config(path)
    assert 'evaluation' in EXTRA_TOP_LEVEL_KEYS


def test_missing_file_names_path(tmp_path):
    missing = str(tmp_path / 'nope.py')
    with pytest.raises(FileNotFoundError, match='nope.py'):
        load_config(missing)


def test_dict_over_none_in_base_names_file_and_fix(tmp_path):
    (tmp_path / 'base.py').write_text('evaluation = None\n')
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['./base.py']\nevaluation = dict(kind='shapes')\n")
    with pytest.raises(ConfigError, match=r'child\.py: .*evaluation.*_delete_=True'):
        load_config(str(child))


def test_unknown_top_level_key_without_close_match_explains_the_rule():
    with pytest.raises(ConfigError, match="helper variables start with '_'"):
        validate_config({'work_dir': 'x', 'vis_backends': []})


def test_plain_dict_and_error_type():
    expected = '^work_dri: unknown top-level config key. Did you mean: work_dir'
    with pytest.raises(ValueError, match=expected):  # ConfigError is a ValueError
        validate_config({'work_dri': 'x', '_helper': 1})
    validate_config({'work_dir': 'x', 'launcher': 'pytorch', 'custom_imports': {}})
