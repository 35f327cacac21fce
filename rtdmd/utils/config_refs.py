"""Late-bound references between config keys: a string ``'${a.b}'`` becomes the value at ``a.b``.

They are resolved after ``--cfg-options`` are merged, so overriding ``world.means`` on the
command line changes every place that refers to ``${world}`` (teacher, reward, metrics) at once.
mmengine's ``{{_base_.x}}`` is substituted when the file is read, before overrides, which is why
it cannot serve here.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from mmengine.config import Config, ConfigDict

#: A whole-string reference ``'${a.b}'``; group 1 is the dotted path.
REFERENCE = re.compile(r'^\$\{([A-Za-z_][\w.]*)\}$')


def _lookup(root: dict, path: str) -> Any:
    node: Any = root
    for part in path.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config reference '${{{path}}}' points to nothing: no key "
                           f"'{part}' in it; define the top-level '{path.split('.')[0]}'")
        node = node[part]
    return node


def resolve_references(cfg: Config) -> Config:
    """Replace every ``'${key.path}'`` string in ``cfg`` by a deep copy of that value (in place).

    References may point to values that contain references; cycles raise ``ValueError``.
    """

    def resolve(value: Any, trail: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            match = REFERENCE.match(value)
            if not match:
                return value
            path = match.group(1)
            if path in trail:
                raise ValueError(f'config references form a cycle: {" -> ".join(trail + (path,))}')
            return resolve(copy.deepcopy(_lookup(root, path)), trail + (path,))
        if isinstance(value, dict):
            return type(value)({k: resolve(v, trail) for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(v, trail) for v in value)
        return value

    root = cfg.to_dict()
    resolved = {k: resolve(v, ()) for k, v in root.items()}
    for key, value in resolved.items():
        cfg[key] = ConfigDict(value) if isinstance(value, dict) else value
    return cfg
