"""A Runner for the later stages of a pipeline: the environment and config are not logged again.

mmengine's ``Runner.__init__`` logs the system and runtime environment and the whole config
(``Runner._log_env``, a few hundred lines for a stage config). A pipeline builds one Runner per
stage, so a 7-stage job would log them 7 times. The first stage that trains uses the plain
``Runner``; the later ones use :class:`LaterStageRunner`, which logs one line instead. Every
stage's resolved config is still written to its work dir (``Runner.dump_config``), and its log
file still starts with that line, so each stage's files stay self-describing.
"""

from __future__ import annotations

import os.path as osp

from mmengine.runner import Runner

__all__ = ['LaterStageRunner']


class LaterStageRunner(Runner):
    """``Runner`` whose environment and config dump is one line pointing at the dumped config."""

    def _log_env(self, env_cfg: dict) -> None:
        name = osp.basename(self.cfg.filename) if self.cfg.filename else f'{self.timestamp}.py'
        self.logger.info(f'environment: as logged by the first stage; seed {self._seed}; '
                         f'config: {osp.join(self.work_dir, name)}')
