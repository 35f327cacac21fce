"""Write what a run trained (a shapes teacher, the feature network) when training ends."""

from __future__ import annotations

import os
import os.path as osp
import shutil
import tempfile
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from rtdmd.registry import HOOKS


@HOOKS.register_module()
class ExportWeightsHook(Hook):
    """After training, ``model.export_weights(<out_dir>)``, written atomically.

    The folder is first written next to ``out_dir`` and renamed into place, so an interrupted
    export never leaves a half-written folder where a loader would read it.

    Args:
        out_dir: the folder to write; relative paths are taken under the run's work dir.
    """

    priority = 'LOW'

    def __init__(self, out_dir: str = 'export') -> None:
        self.out_dir = out_dir

    def after_train(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'export_weights'):
            raise TypeError(f'ExportWeightsHook needs a model with export_weights(path); '
                            f'{type(model).__name__} has none')
        out = self.out_dir if osp.isabs(self.out_dir) else osp.join(runner.work_dir, self.out_dir)
        parent = osp.dirname(osp.abspath(out))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(out)}-', dir=parent)
        try:
            model.export_weights(tmp)
            if osp.isdir(out):
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if osp.isdir(tmp):
                shutil.rmtree(tmp)
        runner.logger.info(f'{type(model).__name__}: weights written to {out}')
