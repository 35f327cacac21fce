"""Where real weights live, and a clear error when they are not there.

Every real backbone reads its weights from local diffusers-format directories (nothing reaches
for the network). Paths are relative to one root: the config's top-level ``weights_root``,
which defaults to the ``RTDMD_WEIGHTS`` environment variable (``./weights`` when unset).
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Mapping, Sequence

WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth')


class MissingWeightsError(FileNotFoundError):
    """A pretrained directory is missing or incomplete."""


def resolve_weights_path(root: str | None, path: str) -> str:
    """``path`` if absolute, else ``root/path`` (root defaults to ``$RTDMD_WEIGHTS`` or weights)."""
    if osp.isabs(path):
        return path
    root = root or os.environ.get('RTDMD_WEIGHTS', 'weights')
    return osp.join(root, path)


def _has_weights(folder: str) -> bool:
    return osp.isdir(folder) and any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(folder))


def check_pretrained_dir(path: str, components: Mapping[str, Sequence[str]], repo_id: str,
                         role: str) -> None:
    """Fail early, naming what is missing and how to get it.

    Args:
        path: the diffusers-format directory.
        components: ``{sub_folder: [files it must hold]}``; the special file ``'*weights'``
            means "at least one weight file".
        repo_id: where the weights come from (for the message).
        role: which role(s) the directory serves (for the message).
    """
    missing = []
    for sub, files in components.items():
        folder = osp.join(path, sub) if sub else path
        for name in files:
            if name == '*weights':
                if not _has_weights(folder):
                    missing.append(f'{folder}/*.safetensors')
            elif not osp.isfile(osp.join(folder, name)):
                missing.append(osp.join(folder, name))
    if not missing:
        return
    shown = '\n  '.join(missing[:8]) + ('\n  ...' if len(missing) > 8 else '')
    raise MissingWeightsError(
        f'the {role} weights are not at {path!r} (missing:\n  {shown}\n).\n'
        f'Expected the diffusers-format snapshot of {repo_id}. Get it with\n'
        f'  huggingface-cli download {repo_id} --local-dir {path}\n'
        f'and point rtdmd at the folder that holds it: export RTDMD_WEIGHTS=<that folder> '
        f'or --cfg-options weights_root=<that folder> (or give an absolute path in the config).')
