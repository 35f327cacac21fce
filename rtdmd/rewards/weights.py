"""Where the reward-model weights live, and a clear error when they are not there.

No reward model reaches for the network: every learned scorer reads its weights from a local
folder under one root, the ``root`` argument of the scorer, else the ``RTDMD_REWARD_WEIGHTS``
environment variable, else ``./weights/rewards``. Standard library only, so importing it is free.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

DEFAULT_REWARD_WEIGHTS_ROOT = osp.join('weights', 'rewards')


class MissingRewardWeightsError(FileNotFoundError):
    """A reward model's weight folder or file is missing or incomplete."""


def reward_weights_root(root: str | None = None) -> str:
    """``root`` if given, else ``$RTDMD_REWARD_WEIGHTS``, else ``weights/rewards``."""
    return root or os.environ.get('RTDMD_REWARD_WEIGHTS') or DEFAULT_REWARD_WEIGHTS_ROOT


def require_files(path: str, files: Sequence[str], source: str, scorer: str) -> None:
    """Fail early, naming the scorer, the files it expects and where they come from.

    Args:
        path: the folder that must hold ``files``.
        files: file names relative to ``path``; an entry with alternatives separated by ``'|'``
            (``'model.safetensors|pytorch_model.bin'``) is satisfied by any one of them.
        source: where the files come from (a Hugging Face repo id or a URL), for the message.
        scorer: the scorer that needs them, for the message.

    Raises:
        MissingRewardWeightsError: if any file is missing.
    """
    missing = [entry for entry in files
               if not any(osp.isfile(osp.join(path, name)) for name in entry.split('|'))]
    if not missing:
        return
    shown = '\n  '.join(osp.join(path, m) for m in missing)
    # A bare Hugging Face repo id gets a download command; anything else is shown as written.
    hint = (f' Get them with\n  huggingface-cli download {source} --local-dir {path}\n'
            if ' ' not in source and '://' not in source else '\n')
    raise MissingRewardWeightsError(
        f'the {scorer} reward weights are not at {path!r} (missing:\n  {shown}\n).\n'
        f'They come from {source}.{hint}'
        f'Put them under one folder and point rtdmd at it: export '
        f'RTDMD_REWARD_WEIGHTS=<that folder> or pass root=<that folder> to the scorer.')
