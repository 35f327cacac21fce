"""Import every rtdmd module that registers something, and make 'rtdmd' the default scope."""

from __future__ import annotations

import datetime

from mmengine.registry import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Populate the rtdmd registries (mmengine's root registries look there by scope).

    mmengine only follows a child registry's lazy ``locations`` when building through that
    child; the Runner looks some types up in its root registries (model wrappers, hooks), so
    everything is imported up front, as mmdet's ``register_all_modules`` does.
    """
    import rtdmd.datasets  # noqa: F401
    import rtdmd.engine  # noqa: F401
    import rtdmd.evaluation  # noqa: F401
    import rtdmd.models  # noqa: F401
    import rtdmd.rewards  # noqa: F401

    if init_default_scope:
        current = DefaultScope.get_current_instance()
        if current is None or current.scope_name != 'rtdmd':
            name = f'rtdmd-{datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")}'
            DefaultScope.get_instance(name, scope_name='rtdmd')
