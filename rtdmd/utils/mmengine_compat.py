"""The two fixes mmengine 0.10.7 needs on torch >= 2.6 and on machines without GPUs.

``tools/train.py`` and ``tools/test.py`` call :func:`apply_mmengine_patches` first thing and
:func:`init_distributed` before building the Runner:

1. Loading: mmengine's local checkpoint loader calls ``torch.load(path)``, which on torch >= 2.6
   refuses the ``HistoryBuffer`` and NumPy objects of mmengine's training checkpoints. rtdmd
   writes those as plain tensors and dicts (:mod:`rtdmd.utils.checkpoint_io`), so the local-file
   scheme is re-registered with a loader that keeps ``weights_only=True``, verifies the
   checkpoint's recorded checksum and rebuilds the mmengine objects: no local file is ever
   unpickled with code. Remote schemes (``http://``, ``pavi://``, ...) keep mmengine's loaders
   and so torch's safe default.
2. Speed: mmengine formats the whole config with yapf for the log, for each visualisation
   backend, for the dump and again inside *every* checkpoint (``meta.cfg``) -- seconds each for
   a pipeline stage's config, most of a short run's time. The formatter is memoised on its
   input text (the output is a pure function of it).
3. CPU distributed: mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally.
   ``Runner.setup_env`` only calls it when ``torch.distributed`` is not yet initialised
   (``if self.distributed and not is_distributed()``), so starting the group here first -- gloo
   without CUDA, nccl with it -- lets a Runner with ``launcher='pytorch'`` run on CPU.
"""

from __future__ import annotations

import datetime
import os
import os.path as osp
import subprocess

import torch
import torch.distributed as dist

from .checkpoint_io import CheckpointReadError, load_checkpoint_file

__all__ = [
    'CheckpointReadError',
    'DEFAULT_DIST_TIMEOUT_S',
    'dist_timeout',
    'apply_mmengine_patches',
    'init_distributed',
    'load_from_local',
    'patch_checkpoint_loader',
]

_DEFAULT_MASTER_PORT = '29500'
#: Collective timeout when the config sets none: every rank may load a 10+ GB model before the
#: first collective, far beyond torch's 10-minute default.
DEFAULT_DIST_TIMEOUT_S = 1800  # torch.distributed's default, as in mmengine's slurm launcher


def load_from_local(filename: str, map_location: str | torch.device | None = None) -> dict:
    """Load a local checkpoint safely (``weights_only=True``, checksum verified when recorded).

    Named like mmengine's loader on purpose: ``CheckpointLoader`` logs ``name[10:]`` as the
    backend ("Loads checkpoint by local backend").

    Args:
        filename: Local path; ``~`` is expanded.
        map_location: Same as :func:`torch.load`.

    Returns:
        The checkpoint dict (``meta``, ``state_dict``, ``optimizer``, ``message_hub``, ...) with
        mmengine's objects rebuilt.

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: the file is truncated, corrupt (fails its checksum), or needs code
            to load (:class:`~rtdmd.utils.checkpoint_io.UnsafeCheckpointError`).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location=map_location)


def patch_checkpoint_loader() -> None:
    """Route local paths (mmengine's '' prefix) through :func:`load_from_local`."""
    # Imported here: mmengine.runner pulls in transformers/peft (seconds), which spawned
    # worker processes that only need init_distributed should not pay for.
    from mmengine.runner.checkpoint import CheckpointLoader

    if CheckpointLoader._schemes.get('') is not load_from_local:
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def patch_config_formatter() -> None:
    """Memoise the yapf call of ``Config.pretty_text`` (same text in, same text out)."""
    import functools

    import mmengine.config.config as config_module

    if getattr(config_module.FormatCode, '_rtdmd_memoised', False):
        return
    format_code = config_module.FormatCode

    @functools.lru_cache(maxsize=64)
    def _format(text: str, style: tuple | None, verify: bool | None) -> tuple:
        kwargs = {} if verify is None else dict(verify=verify)
        return format_code(text, style_config=None if style is None else dict(style), **kwargs)

    def memoised(text: str, style_config: dict | None = None, verify: bool | None = None):
        style = None if style_config is None else tuple(sorted(style_config.items()))
        return _format(text, style, verify)

    memoised._rtdmd_memoised = True
    config_module.FormatCode = memoised


def apply_mmengine_patches() -> None:
    """Apply every mmengine fix this project needs; safe to call more than once.

    The process-group fix is not a patch: call :func:`init_distributed` before the Runner.
    """
    patch_checkpoint_loader()
    patch_config_formatter()


def init_distributed(
    launcher: str, backend: str | None = None, timeout_s: float | None = None
) -> tuple[int, int]:
    """Start ``torch.distributed`` for ``launcher`` unless it is already running.

    With CUDA: nccl and ``torch.cuda.set_device(local_rank)``; without: gloo, CUDA untouched.
    Reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (launcher ``'pytorch'``) or
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_NODELIST`` (``'slurm'``, which then sets the
    torchrun variables, ``MASTER_ADDR`` from ``scontrol`` and ``MASTER_PORT`` default 29500).

    Args:
        launcher: ``'none'``, ``'pytorch'`` or ``'slurm'`` (the tools' ``--launcher``).
        backend: Force a backend; None picks nccl with CUDA, gloo without.
        timeout_s: Collective timeout in seconds (``env_cfg.dist_cfg.timeout``); None gives
            :data:`DEFAULT_DIST_TIMEOUT_S`.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for ``'none'``.

    Raises:
        ValueError: an unknown launcher, or nccl requested on a machine without CUDA.
    """
    if launcher == 'none':
        return 0, 1
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f"launcher must be 'none', 'pytorch' or 'slurm', got {launcher!r}")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launcher == 'slurm':
        _export_slurm_env()
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', 0))

    use_cuda = torch.cuda.is_available()
    backend = backend or ('nccl' if use_cuda else 'gloo')
    if backend == 'nccl' and not use_cuda:
        raise ValueError(
            "backend 'nccl' needs CUDA, which is not available here; "
            'pass backend=None (gloo on CPU) or a CPU backend'
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=DEFAULT_DIST_TIMEOUT_S if timeout_s is None
                                 else float(timeout_s))
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return rank, world_size


def _export_slurm_env() -> None:
    """Translate SLURM's variables into torchrun's, as mmengine's ``_init_dist_slurm`` does."""
    proc_id = int(os.environ['SLURM_PROCID'])
    local_id = os.environ.get('SLURM_LOCALID')
    if local_id is not None:
        local_rank = int(local_id)
    else:
        local_rank = proc_id % max(torch.cuda.device_count(), 1)
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        hosts = subprocess.run(
            ['scontrol', 'show', 'hostname', node_list], check=True, capture_output=True, text=True
        ).stdout.split()
        if not hosts:
            raise RuntimeError(f'scontrol show hostname {node_list} returned no host')
        os.environ['MASTER_ADDR'] = hosts[0]
    os.environ.setdefault('MASTER_PORT', _DEFAULT_MASTER_PORT)
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)


def dist_timeout(cfg) -> float:
    """``env_cfg.dist_cfg.timeout`` in seconds (:data:`DEFAULT_DIST_TIMEOUT_S` when unset).

    Raises:
        ValueError: the value is not a positive number.
    """
    value = ((cfg.get('env_cfg') or {}).get('dist_cfg') or {}).get('timeout')
    if value is None:
        return float(DEFAULT_DIST_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f'env_cfg.dist_cfg.timeout must be a positive number of seconds, '
                         f'got {value!r}')
    return float(value)
