"""FSDP through tools/train.py and the real Runner on 2 gloo ranks: checkpoints and resumes.

Stage 2 on tiny FLUX.2 (its draws are keyed by each sample's group, so 2 ranks with a batch of
1 train what one process with a batch of 2 trains). The checkpoints of a sharded run hold full
tensors, the layout of a one-process run, so one chain of short runs shows every resume:

- ``single``: one process, iterations 1-2;
- ``one_to_two``: 2 FSDP ranks resume ``single``'s iteration 1 and train to 3 (1 -> 2 ranks:
  its iteration 2 is ``single``'s);
- ``fsdp_resumed``: 2 FSDP ranks resume ``one_to_two``'s iteration 2 (exactly its iteration 3);
- ``two_to_one``: one process resumes ``one_to_two``'s iteration 2 (2 -> 1: its iteration 3).

All four run in one spawn of two processes (``tools/train.py``'s ``main``, ``--launcher
pytorch`` for the ranked runs), so the imports are paid once; ``tools/dist_train.sh`` itself is
run by tests/test_tools/test_train_test_tools.py and the sweep test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import REPO
from tests.ranks import free_port, start_ranks
from tests.test_tools.test_train_flux2 import _load

CONFIG = 'configs/rtdmd/flux2_klein_4b_4step.py'
FSDP = 'model_wrapper_cfg.type=rtdmd.DistillerFullyShard'
GLOBAL_BATCH = 2


def _options(weights: Path, ranks: int, max_iters: int) -> list[str]:
    from rtdmd.testing.flux2 import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, tiny_backbone_cfg

    cfg = tiny_backbone_cfg(str(weights))
    return ['stages=None', f'backbone.pretrained={cfg["pretrained"]}',
            f'backbone.generator_init={cfg["generator_init"]}',
            f'backbone.resolution={TINY_RESOLUTION}',
            f'backbone.max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}',
            'backbone.text_encoder_out_layers=[1,2,3]', 'backbone.dtype=float32',
            'backbone.gradient_checkpointing=False', 'backbone.lora.rank=4',
            'backbone.lora.alpha=8', f'train_cfg.max_iters={max_iters}',
            f'train_dataloader.batch_size={GLOBAL_BATCH // ranks}',
            'train_dataloader.num_workers=0', 'default_hooks.checkpoint.interval=1',
            'default_hooks.logger.interval=1', 'model.group_size=2',
            'train_rewards._delete_=True', 'train_rewards.main.scorer.type=ImageBrightnessReward',
            'custom_hooks.0.interval=1',  # an EMA pull every iteration
            # ranked runs draw sample grids every iteration: a sharded generator samples on
            # every rank (rank 0 alone would wait for the others' shards forever)
            *([FSDP, 'default_hooks.visualization.interval=1'] if ranks > 1 else [])]


def _train_tool():
    spec = importlib.util.spec_from_file_location('rtdmd_tools_train', REPO / 'tools' / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tool, root: Path, name: str, ranks: int, max_iters: int,
         resume: Path | None = None) -> None:
    """tools/train.py into ``root/name`` (``resume``: a copy of that checkpoint there)."""
    work_dir = root / name
    args = [CONFIG, '--work-dir', str(work_dir)]
    if resume is not None:
        if dist.is_initialized():
            dist.barrier()  # every rank has finished writing what it resumes
        if int(os.environ.get('RANK', '0')) == 0:
            work_dir.mkdir(parents=True)
            for suffix in ('', '.json'):
                shutil.copy(f'{resume}{suffix}', f'{work_dir / resume.name}{suffix}')
        if dist.is_initialized():
            dist.barrier()
        args += ['--resume', str(work_dir / resume.name)]
    if ranks > 1:
        args += ['--launcher', 'pytorch']
    tool.main([*args, '--cfg-options', *_options(root / 'weights', ranks, max_iters)])


def _worker(rank: int, port: int, root: str) -> None:
    root = Path(root)
    torch.set_num_threads(1)
    tool = _train_tool()
    if rank == 0:  # rank 1 waits in the rendezvous meanwhile
        _run(tool, root, 'single', 1, 2)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE='2')
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        _run(tool, root, 'one_to_two', 2, 3, root / 'single' / 'iter_1.pth')
        _run(tool, root, 'fsdp_resumed', 2, 3, root / 'one_to_two' / 'iter_2.pth')
    finally:
        dist.destroy_process_group()
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        del os.environ[key]
    if rank == 1:  # the other process is done: one process again
        _run(tool, root, 'two_to_one', 1, 3, root / 'one_to_two' / 'iter_2.pth')


@pytest.fixture(scope='module')
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import rtdmd.apis.pipeline  # noqa: F401  (imported here once: forked ranks inherit it)
    from rtdmd.testing.flux2 import build_flux2_klein_dirs
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    root = tmp_path_factory.mktemp('fsdp_resume')
    build_flux2_klein_dirs(str(root / 'weights'))  # once, before the ranks read it
    start_ranks(_worker, (free_port(), str(root)))
    return root


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """LoRA, EMA and optimizer moments of both roles, by name."""
    out = {f'state.{k}': v for k, v in ckpt['state_dict'].items() if 'lora_' in k}
    out.update({f'ema.{k}': v for k, v in ckpt['ema_state'].items()})
    for role, optim in ckpt['optimizer'].items():
        for index, state in optim['state'].items():
            out.update({f'optim.{role}.{index}.{k}': torch.as_tensor(v)
                        for k, v in state.items()})
    return out


def _same(a: dict, b: dict, iteration: int, exact: bool) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    assert int(a['meta']['iter']) == int(b['meta']['iter']) == iteration
    for key in ta:
        if exact:
            assert torch.equal(ta[key], tb[key]), key
        else:
            torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_fsdp_checkpoint_is_full_and_resumes_exactly(chain: Path) -> None:
    ckpt = _load(chain / 'one_to_two' / 'iter_3.pth')
    # full tensors in the single-process layout: LoRA of rank 4, int-keyed optimizer state
    lora_a = [v for k, v in ckpt['state_dict'].items() if k.endswith('lora_A.default.weight')]
    assert lora_a and all(v.shape[0] == 4 and type(v) is torch.Tensor for v in lora_a)
    assert all(isinstance(i, int) for o in ckpt['optimizer'].values() for i in o['state'])
    assert ckpt['ema_state'].keys() == {
        k[len('backbone.generator.'):] for k in ckpt['state_dict']
        if k.startswith('backbone.generator.') and '.default.' in k}
    _same(_load(chain / 'fsdp_resumed' / 'iter_3.pth'), ckpt, 3, exact=True)
    # the sharded runs drew their grids (rank 0 writes them) and training stayed exact
    assert sorted(p.name for p in (chain / 'fsdp_resumed' / 'vis').glob('*.png')) == [
        'samples_iter_3.png']


@pytest.mark.slow
def test_one_process_resumes_on_two_fsdp_ranks(chain: Path) -> None:
    """Iteration 1 of one process, continued on 2 FSDP ranks, trains its iteration 2."""
    _same(_load(chain / 'one_to_two' / 'iter_2.pth'), _load(chain / 'single' / 'iter_2.pth'), 2,
          exact=False)


@pytest.mark.slow
def test_two_fsdp_ranks_resume_on_one(chain: Path) -> None:
    """Iteration 2 of 2 FSDP ranks, continued in one process, ends where the 2 ranks end."""
    _same(_load(chain / 'two_to_one' / 'iter_3.pth'), _load(chain / 'one_to_two' / 'iter_3.pth'),
          3, exact=False)
