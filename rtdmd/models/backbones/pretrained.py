"""Where real weights live, and a clear error when they are not there.

Every real backbone reads its weights from local diffusers-format directories (nothing reaches
for the network). Paths are relative to one root: the config's top-level ``weights_root``,
which defaults to the ``RTDMD_WEIGHTS`` environment variable (``./weights`` when unset).

Keep this module free of imports beyond the standard library: ``tools/train.py`` loads it from
its file before torch is imported (:func:`check_config_weights`).
"""

from __future__ import annotations

import os
import os.path as osp
import re
from collections.abc import Mapping, Sequence
from typing import Any

WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth')
# mmengine's environment placeholder '{{$NAME:default}}' (Config._substitute_env_variables).
_ENV_PLACEHOLDER = re.compile(r'^\{\{[\'"]?\s*\$(\w+)\s*:\s*(\S*?)\s*[\'"]?\}\}$')


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
        f'  hf download {repo_id} --local-dir {path}\n'
        f'and point rtdmd at the folder that holds it: export RTDMD_WEIGHTS=<that folder> '
        f'or --cfg-options weights_root=<that folder> (or give an absolute path in the config).')


def check_config_weights(cfg: Mapping[str, Any]) -> None:
    """Pre-flight check of the weight folders of a config's backbone (standard library only).

    ``tools/train.py`` runs it before torch and diffusers are imported, so a run without weights
    stops in a fraction of a second. It looks at the ``backbone`` at the top level and under
    ``model`` (``'${key}'`` values are looked up at the top level; ``'{{$NAME:default}}'``
    placeholders are substituted from the environment, for a config read with mmengine's
    ``use_environment_variables=False``, whose logging would import torch) and checks that its
    ``pretrained`` and ``generator_init`` folders hold ``transformer/config.json`` and weights,
    the part every diffusers family has; the family's complete list is checked when the backbone
    is built. The download hint names the backbone's ``repo_id`` / ``generator_repo_id`` when
    the config gives them, else the folder name.

    Raises:
        MissingWeightsError: as :func:`check_pretrained_dir`.
    """
    def value(v: Any) -> Any:
        if isinstance(v, str) and v.startswith('${') and v.endswith('}'):
            v = cfg.get(v[2:-1])
        placeholder = _ENV_PLACEHOLDER.match(v) if isinstance(v, str) else None
        return os.environ.get(placeholder[1], placeholder[2]) if placeholder else v

    model = value(cfg.get('model'))
    for backbone in (value(cfg.get('backbone')),
                     value(model.get('backbone')) if isinstance(model, Mapping) else None):
        if not isinstance(backbone, Mapping):
            continue
        root = value(backbone.get('weights_root'))
        for key, repo_key, role in (('pretrained', 'repo_id', 'teacher / fake score'),
                                    ('generator_init', 'generator_repo_id', 'generator')):
            path = value(backbone.get(key))
            if isinstance(path, str) and path:
                check_pretrained_dir(resolve_weights_path(root, path),
                                     {'transformer': ['config.json', '*weights']},
                                     value(backbone.get(repo_key)) or osp.basename(path), role)
