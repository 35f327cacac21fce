"""Checkpoints that a kill, a full disk or a flipped bit cannot take away.

mmengine's ``CheckpointHook`` writes a checkpoint under its final name, rewrites
``last_checkpoint`` in place and deletes the oldest checkpoint *before* writing the new one; a
kill at the wrong moment leaves an empty ``last_checkpoint``, a truncated newest file, or (with
``max_keep_ckpts=1``) nothing at all. :class:`SafeCheckpointHook` keeps mmengine's schedule
(interval, ``save_last``, ``max_keep_ckpts``) and changes how a checkpoint is committed:

1. refuse to write weights, EMA or optimizer state that hold NaN or inf (the run stops, the
   previous checkpoints stay);
2. write the file under a temporary name, ``fsync`` it, read it back (every zip member's CRC
   and the SHA-256 of every byte);
3. write its record (checksum, iteration, run identity) beside it, then rename the file into
   place and rewrite ``last_checkpoint``, each atomically;
4. only then delete the checkpoints that fell out of ``max_keep_ckpts``.
"""

from __future__ import annotations

import os
import os.path as osp
import zipfile
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from rtdmd.engine.fsdp import gather_checkpoint_state, local_shards
from rtdmd.registry import HOOKS
from rtdmd.utils.atomic import (
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    remove_stale_temporaries,
    temporary_name,
)
from rtdmd.utils.checkpoint_io import (
    RECORD_FORMAT,
    encode_checkpoint,
    file_sha256,
    record_path,
    weights_sha256,
)
from rtdmd.utils.errors import TrainingStopped
from rtdmd.utils.run_identity import config_identity


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's checkpoint schedule with atomic, verified, checksummed commits.

    Args:
        interval: save every this many iterations (or epochs with ``by_epoch``).
        by_epoch: count epochs instead of iterations.
        save_optimizer: include the optimizer state.
        save_param_scheduler: include the parameter schedulers' state.
        max_keep_ckpts: keep this many newest checkpoints (``-1``: all); older ones are removed
            only after a newer one is committed.
        save_last: also save at the end of training.
        save_begin: first step that may save.
        filename_tmpl: file name template (default ``iter_{}.pth`` / ``epoch_{}.pth``).
    """

    priority = 'LOWEST'  # after every hook that adds to the checkpoint (EMA, RNG state)

    def __init__(self, interval: int = -1, by_epoch: bool = True, save_optimizer: bool = True,
                 save_param_scheduler: bool = True, max_keep_ckpts: int = -1,
                 save_last: bool = True, save_begin: int = 0,
                 filename_tmpl: str | None = None) -> None:
        super().__init__(interval=interval, by_epoch=by_epoch, save_optimizer=save_optimizer,
                         save_param_scheduler=save_param_scheduler,
                         max_keep_ckpts=max_keep_ckpts, save_last=save_last,
                         save_begin=save_begin, filename_tmpl=filename_tmpl)
        self.identity: dict = {}
        self._weights_sha256: str | None = None
        self._full_state: dict | None = None

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        if is_main_process():
            for path in remove_stale_temporaries(self.out_dir):
                runner.logger.info(f'removed {path}, left by an interrupted write')
        self.identity = config_identity(runner.cfg, runner.cfg.get('stage_name'))

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """Refuse non-finite state; make the checkpoint loadable with ``weights_only=True``."""
        if self._full_state is not None:  # a sharded run: the gathered full tensors
            checkpoint.update(self._full_state)
        bad = non_finite_entries(checkpoint)
        if bad:
            raise TrainingStopped(
                f'refusing to write a checkpoint at iter {runner.iter + 1}: non-finite values in '
                f'{", ".join(bad[:5])}{" ..." if len(bad) > 5 else ""}. The last good checkpoint '
                f'is {self.last_ckpt or "none (no checkpoint was written yet)"}; nothing was '
                f'overwritten')
        ident = {k: v for k, v in self.identity.items() if k != 'options'}
        checkpoint.setdefault('meta', {})['rtdmd'] = ident
        self._weights_sha256 = weights_sha256(checkpoint)
        for key in list(checkpoint):
            checkpoint[key] = encode_checkpoint(checkpoint[key])

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        name = self.filename_tmpl.format(step)
        final = osp.join(self.out_dir, name)
        keep = [s for s in self.keep_ckpt_ids if s != step] if self.max_keep_ckpts > 0 else []
        if self.max_keep_ckpts > 0:
            runner.message_hub.update_info('keep_ckpt_ids',
                                           (keep + [step])[-self.max_keep_ckpts:])
        runner.message_hub.update_info('last_ckpt', final)
        tmp = temporary_name(final)
        # FSDP: every rank joins the gather here; only rank 0 runs save_checkpoint.
        self._full_state = gather_checkpoint_state(runner, self.save_optimizer)
        try:
            with local_shards():  # rank 0 alone: no gathers in there (done above)
                runner.save_checkpoint(self.out_dir, osp.basename(tmp),
                                       save_optimizer=self.save_optimizer,
                                       save_param_scheduler=self.save_param_scheduler,
                                       meta=meta, by_epoch=self.by_epoch)
            if is_main_process():
                self._commit(runner, tmp, final, step)
        except OSError as err:
            if osp.exists(tmp):
                os.remove(tmp)
            raise TrainingStopped(
                f'could not write checkpoint {final}: {err}. The previous checkpoints are '
                f'intact ({self.last_ckpt or "none yet"}); free the space or fix the folder, '
                f'then continue with --resume') from err
        finally:
            self._full_state = None
        self.last_ckpt = final
        if self.max_keep_ckpts > 0:
            keep.append(step)
            while len(keep) > self.max_keep_ckpts:
                self._remove(keep.pop(0))
            self.keep_ckpt_ids.clear()
            self.keep_ckpt_ids.extend(keep)

    def _commit(self, runner: Any, tmp: str, final: str, step: int) -> None:
        """Verify the written bytes, record them, and move the file into place."""
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        with zipfile.ZipFile(tmp) as archive:
            broken = archive.testzip()  # reads every member back and checks its CRC-32
        if broken is not None:
            raise OSError(f'read-back of {tmp} failed: member {broken} differs from what was '
                          f'written')
        record = dict(format=RECORD_FORMAT, sha256=file_sha256(tmp), size=osp.getsize(tmp),
                      iter=runner.iter if self.by_epoch else step, step=step,
                      weights_sha256=self._weights_sha256, identity=self.identity)
        atomic_write_json(record_path(final), record)
        os.replace(tmp, final)
        fsync_dir(self.out_dir)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), final)

    def _remove(self, step: int) -> None:
        if not is_main_process():
            return
        path = osp.join(self.out_dir, self.filename_tmpl.format(step))
        for target in (path, record_path(path)):
            if osp.isfile(target):
                os.remove(target)


def non_finite_entries(checkpoint: dict) -> list[str]:
    """Names of the floating tensors in a checkpoint's weights, EMA or optimizer that hold NaN
    or inf."""
    bad: list[str] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() and not bool(torch.isfinite(node).all()):
                bad.append(name)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f'{name}.{key}' if name else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{name}[{i}]')

    for key in ('state_dict', 'ema_state', 'optimizer'):
        if key in checkpoint:
            walk(checkpoint[key], key)
    return bad
