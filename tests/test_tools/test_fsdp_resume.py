"""FSDP through the real Runner: tools/dist_train.sh on 2 gloo processes, checkpoints, resumes.

Stage 2 on tiny FLUX.2 (its draws are keyed by each sample's group, so 2 ranks with a batch of
1 train what one process with a batch of 2 trains). The checkpoints of a sharded run hold full
tensors, the layout of a one-process run, so it resumes under FSDP exactly, and on 1 rank; a
one-process checkpoint resumes on 2 FSDP ranks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.test_models.test_rtdmd_scale import _free_port
from tests.test_tools.test_train_flux2 import _load, run_train

CONFIG = 'configs/rtdmd/flux2_klein_4b_4step.py'
FSDP = 'model_wrapper_cfg.type=rtdmd.DistillerFullyShard'


def _options(weights: Path) -> list[str]:
    from rtdmd.testing.flux2 import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, tiny_backbone_cfg

    cfg = tiny_backbone_cfg(str(weights))
    return ['stages=None', f'backbone.pretrained={cfg["pretrained"]}',
            f'backbone.generator_init={cfg["generator_init"]}',
            f'backbone.resolution={TINY_RESOLUTION}',
            f'backbone.max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}',
            'backbone.text_encoder_out_layers=[1,2,3]', 'backbone.dtype=float32',
            'backbone.gradient_checkpointing=False', 'backbone.lora.rank=4',
            'backbone.lora.alpha=8', 'train_cfg.max_iters=2', 'train_dataloader.num_workers=0',
            'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
            'model.group_size=2', 'train_rewards._delete_=True',
            'train_rewards.main.scorer.type=ImageBrightnessReward',
            'custom_hooks.0.interval=1']  # an EMA pull every iteration


def _train(work_dir: Path, weights: Path, ranks: int, *extra: str) -> dict:
    """Train (or resume) to iteration 2; the global batch is 2 prompts x K = 2."""
    options = [*_options(weights), f'train_dataloader.batch_size={2 // ranks}']
    if ranks > 1:
        options.append(FSDP)
        cmd = ['bash', 'tools/dist_train.sh', CONFIG, str(ranks)]
    else:
        cmd = None
    args = ['--work-dir', str(work_dir), *extra, '--cfg-options', *options]
    result = run_train(args, env={'PORT': str(_free_port())},
                       python=cmd) if cmd else run_train([CONFIG, *args])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _load(work_dir / 'iter_2.pth')


def _resume_from(checkpoint: Path, work_dir: Path, weights: Path, ranks: int) -> dict:
    work_dir.mkdir(parents=True)
    shutil.copy(checkpoint, work_dir / checkpoint.name)
    shutil.copy(str(checkpoint) + '.json', work_dir / (checkpoint.name + '.json'))
    return _train(work_dir, weights, ranks, '--resume', str(work_dir / checkpoint.name))


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """LoRA, EMA and optimizer moments of both roles, by name."""
    out = {f'state.{k}': v for k, v in ckpt['state_dict'].items() if 'lora_' in k}
    out.update({f'ema.{k}': v for k, v in ckpt['ema_state'].items()})
    for role, optim in ckpt['optimizer'].items():
        for index, state in optim['state'].items():
            out.update({f'optim.{role}.{index}.{k}': torch.as_tensor(v)
                        for k, v in state.items()})
    return out


def _same(a: dict, b: dict, exact: bool) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    assert int(a['meta']['iter']) == int(b['meta']['iter']) == 2
    for key in ta:
        if exact:
            assert torch.equal(ta[key], tb[key]), key
        else:
            torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-rank FSDP run of 2 iterations, a checkpoint after each."""
    root = tmp_path_factory.mktemp('fsdp')
    ckpt = _train(root / 'run', root / 'weights', 2)
    return dict(root=root, iter2=ckpt, iter1=root / 'run' / 'iter_1.pth')


@pytest.mark.slow
def test_fsdp_checkpoint_is_full_and_resumes_exactly(fsdp_run: dict) -> None:
    root, ckpt = fsdp_run['root'], fsdp_run['iter2']
    # full tensors in the single-process layout: LoRA of rank 4, int-keyed optimizer state
    lora_a = [v for k, v in ckpt['state_dict'].items() if k.endswith('lora_A.default.weight')]
    assert lora_a and all(v.shape[0] == 4 and type(v) is torch.Tensor for v in lora_a)
    assert all(isinstance(i, int) for o in ckpt['optimizer'].values() for i in o['state'])
    assert ckpt['ema_state'].keys() == {
        k[len('backbone.generator.'):] for k in ckpt['state_dict']
        if k.startswith('backbone.generator.') and '.default.' in k}
    resumed = _resume_from(fsdp_run['iter1'], root / 'resumed', root / 'weights', 2)
    _same(resumed, ckpt, exact=True)


@pytest.mark.slow
def test_two_fsdp_ranks_resume_on_one(fsdp_run: dict) -> None:
    """The 2-rank checkpoint of iteration 1, continued in one process, ends where the 2-rank
    run ends (both train the same global batches)."""
    root = fsdp_run['root']
    on_one = _resume_from(fsdp_run['iter1'], root / 'two_to_one', root / 'weights', 1)
    _same(on_one, fsdp_run['iter2'], exact=False)


@pytest.mark.slow
def test_one_process_resumes_on_two_fsdp_ranks(fsdp_run: dict) -> None:
    """A one-process run equals the 2-rank FSDP run, and its iteration 1 continued on 2 FSDP
    ranks ends where it ends."""
    root, weights = fsdp_run['root'], fsdp_run['root'] / 'weights'
    single = _train(root / 'single', weights, 1)
    _same(single, fsdp_run['iter2'], exact=False)
    on_two = _resume_from(root / 'single' / 'iter_1.pth', root / 'one_to_two', weights, 2)
    _same(on_two, single, exact=False)
