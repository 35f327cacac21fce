"""Strict config loading: mistyped keys fail before the Runner is built.

mmengine ignores unknown top-level keys and only notices a mistyped constructor argument deep
inside ``Runner.train()`` (or never, for a component that is built lazily). ``tools/train.py`` and
``tools/test.py`` therefore load configs through :func:`load_config`, which checks three things
over the whole tree and reports every problem at once:

1. every top-level key is a parameter of the Runner (``Runner.__init__`` introspected; the class
   named by ``runner_type`` when set), a key mmengine reads from ``cfg`` directly, or one of
   :data:`EXTRA_TOP_LEVEL_KEYS`. Keys starting with ``_`` are config-local helper variables.
2. every dict with a string ``type`` names something registered: the rtdmd registries, their
   mmengine parents and the other mmengine root registries (``OPTIMIZERS``, ``PARAM_SCHEDULERS``,
   ``VISBACKENDS``, ...), honouring mmengine's ``'scope.Name'`` prefix, a ``_scope_`` key and
   full import paths (``'torch.optim.AdamW'``).
3. every other key of such a dict is a parameter of the resolved class (``__init__``) or
   function, unless the signature takes ``**kwargs`` (then nothing can be said; mmengine's
   ``CheckpointHook`` is the exception: its ``**kwargs`` go to ``Runner.save_checkpoint``,
   which takes none beyond the ones the hook passes itself);
4. every value of such a dict has the type its parameter is annotated with (or, unannotated,
   the kind of its default: a number, a bool) -- ``lr='abc'`` or ``max_iters='ten'`` name the key
   and the expected type;
5. untyped dict arguments whose keys a constructor checks only once built (``model.subgrpo``,
   ``model.matching.renoise``, ...) hold known keys: a class declares them in a
   ``dict_arg_keys`` attribute (``{argument: keys}``, or ``{argument: {'*': keys}}`` for a dict
   of such dicts), from the same constants its constructor checks.

Changing a component's ``type`` on the command line (``reward.type=QuadraticReward``) drops the
keys of the base config's dict that the new type does not take (``direction`` of the old
``LinearReward``), logging which; keys the user set on the command line are kept (and checked).

Typeless dicts (``train_cfg=dict(by_epoch=False, ...)``, dataloaders, ``default_hooks``) and
lists are walked recursively. Non-string types (classes from new-style configs) are not resolved.
"""

from __future__ import annotations

import difflib
import inspect
import os.path as osp
from collections.abc import Iterable, Iterator
from typing import Any

from mmengine.config import Config
from mmengine.registry import Registry

from .config_checks import dict_arg_errors, value_type_errors
from .config_refs import resolve_references

__all__ = ['EXTRA_TOP_LEVEL_KEYS', 'ConfigError', 'load_config',
           'validate_config']

#: Project-level top-level keys that are not Runner arguments. tools/*.py and the rtdmd loops
#: read them from ``cfg``; an issue that adds such a key extends this set (and nothing else).
EXTRA_TOP_LEVEL_KEYS: frozenset[str] = frozenset(
    {'world', 'reward', 'backbone', 'stages', 'evaluation', 'weights_root', 'benchmark',
     'train_rewards', 'stage_name', 'family', 'backbones'})

# Top-level keys mmengine itself reads from ``cfg`` although they are not Runner arguments:
# Config.fromfile imports ``custom_imports``; ``Runner.wrap_model`` reads the other three;
# tools pick the runner class from ``runner_type``.
_MMENGINE_TOP_LEVEL_KEYS = frozenset(
    {'runner_type', 'custom_imports', 'model_wrapper_cfg', 'sync_bn', 'find_unused_parameters'}
)

# Keys every build function of mmengine pops before calling the constructor.
_BUILD_KEYS = frozenset({'type', '_scope_'})

# Keys mmengine pops from a typed dict before the constructor sees it, per root registry name:
# build_optim_wrapper pops constructor/paramwise_cfg, build_scheduler_from_cfg pops
# convert_to_iter_based, Runner.register_hook pops priority, Visualizer pops a backend's name.
_REGISTRY_RESERVED_KEYS = {
    'optim_wrapper': frozenset({'constructor', 'paramwise_cfg'}),
    'parameter scheduler': frozenset({'convert_to_iter_based'}),
    'hook': frozenset({'priority'}),
    'vis_backend': frozenset({'name'}),
}

# String values that name a registered thing although they are not under a 'type' key.
_NAMED_TYPE_KEYS = {('optim_wrapper', 'constructor'): 'optimizer wrapper constructor'}

_MAX_SUGGESTIONS = 3
_TOP_LEVEL_HINT = (
    " Config-local helper variables start with '_'; project keys belong in "
    'rtdmd.utils.config.EXTRA_TOP_LEVEL_KEYS.'
)


class ConfigError(ValueError):
    """A config names an unknown key, type or constructor argument.

    Attributes:
        errors: One message per problem, each starting with the offending key path.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        if len(errors) == 1:
            msg = errors[0]
        else:
            msg = f'{len(errors)} config errors:\n' + '\n'.join(f'  - {e}' for e in errors)
        super().__init__(msg)


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Load a config file, merge command-line overrides, resolve ``'${key}'`` references and
    validate the result.

    Args:
        path: Path of a ``.py`` (old- or new-style), ``.json`` or ``.yaml`` config.
        cfg_options: ``--cfg-options`` as parsed by mmengine's ``DictAction``, e.g.
            ``{'train_cfg.max_iters': 10, 'custom_hooks': [...]}``.

    Returns:
        The merged and validated config.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: see :func:`validate_config`.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path!r}')
    try:
        cfg = Config.fromfile(path)
    except TypeError as err:  # mmengine's _base_ merge: a dict over a non-dict, and similar
        raise ConfigError([f'{path}: {err}']) from None
    if cfg_options:
        _check_option_parents(cfg, cfg_options)
        _drop_keys_of_replaced_types(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    try:
        resolve_references(cfg)
    except (KeyError, ValueError) as err:
        raise ConfigError([str(err).strip('"')]) from None
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config | dict) -> None:
    """Check top-level keys, registered types and constructor arguments of a config.

    Args:
        cfg: A loaded config (or a plain dict of the same shape).

    Raises:
        ConfigError: listing every problem as ``'<key.path>: <what> Did you mean: <names>?'``.
    """
    cfg_dict = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    resolver = _Resolver()
    errors: list[str] = []
    items = [
        (k, v)
        for k, v in dict.items(cfg_dict)
        if not str(k).startswith('_') and not _is_lazy_import(v)
    ]

    runner_cls = _runner_class(resolver, dict.get(cfg_dict, 'runner_type'))
    valid_top = (_parameters(runner_cls) or set()) - {'cfg'}
    valid_top |= _MMENGINE_TOP_LEVEL_KEYS | EXTRA_TOP_LEVEL_KEYS
    for key, _ in items:
        if key not in valid_top:
            hint = _suggest(str(key), valid_top) or _TOP_LEVEL_HINT
            errors.append(f'{key}: unknown top-level config key.{hint}')

    scope = dict.get(cfg_dict, 'default_scope') or 'rtdmd'
    for key, value in items:
        errors.extend(_check_node(value, str(key), scope, resolver))
    for path, registry_name in _NAMED_TYPE_KEYS.items():
        name = _get_path(cfg_dict, path)
        if isinstance(name, str) and not resolver.resolve(name, scope, registry_name):
            errors.append(
                f'{".".join(path)}: {name!r} is not a registered {registry_name}.'
                + _suggest(name, resolver.names(scope, registry_name))
            )
    if errors:
        raise ConfigError(errors)


def _check_node(node: Any, path: str, scope: str, resolver: _Resolver) -> list[str]:
    """Recursively check dicts (typed or not) and lists below ``path``."""
    errors: list[str] = []
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            errors.extend(_check_node(item, f'{path}[{i}]', scope, resolver))
        return errors
    if not isinstance(node, dict):
        return errors
    scope = dict.get(node, '_scope_') or scope
    type_name = dict.get(node, 'type')
    if isinstance(type_name, str):
        errors.extend(_check_typed_dict(node, type_name, path, scope, resolver))
    for key, value in dict.items(node):
        if key != 'type':
            errors.extend(_check_node(value, f'{path}.{key}', scope, resolver))
    return errors


def _check_typed_dict(
    node: dict, type_name: str, path: str, scope: str, resolver: _Resolver
) -> list[str]:
    """Resolve ``node['type']`` and compare the other keys with the constructor signature."""
    found = resolver.resolve(type_name, scope)
    if not found:
        return [
            f'{path}.type: {type_name!r} is not a registered type.'
            + _suggest(Registry.split_scope_key(type_name)[1], resolver.names(scope))
        ]
    # The same name may live in several registries; a key is wrong only if no candidate takes it.
    accepted: set[str] = set()
    for registry_name, obj in found:
        params = _parameters(obj)
        if params is None:
            return []
        accepted |= params | _REGISTRY_RESERVED_KEYS.get(registry_name, frozenset())
    errors = []
    for key in dict.keys(node):
        if key not in accepted and key not in _BUILD_KEYS:
            obj = found[0][1]
            name = f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", obj)}'
            errors.append(
                f'{path}.{key}: {key!r} is not an argument of {type_name} ({name}).'
                + _suggest(str(key), accepted)
            )
    if len(found) == 1:  # one candidate: its annotations and nested key sets apply
        errors.extend(value_type_errors(node, found[0][1], path))
        errors.extend(dict_arg_errors(node, found[0][1], path))
    return errors


class _Resolver:
    """Looks names up in every registry tree the way ``Registry.build`` would find them."""

    def __init__(self) -> None:
        import mmengine.registry.root as mmengine_root
        import mmengine.runner  # noqa: F401  (registers mmengine's hooks, loops, optimizers, ...)

        import rtdmd.registry as rtdmd_registry

        candidates = list(vars(mmengine_root).values()) + list(vars(rtdmd_registry).values())
        roots: dict[int, Registry] = {}
        for reg in candidates:
            if isinstance(reg, Registry):
                root = reg._get_root_registry()
                roots[id(root)] = root
        self.roots = list(roots.values())
        for root in self.roots:
            for reg in _walk_tree(root):
                reg.import_from_location()

    def _chains(
        self, scope: str, prefix: str | None, registry_name: str | None
    ) -> Iterator[tuple[str, list[Registry]]]:
        """Yield (root name, registries to search in order) for each root registry tree."""
        for root in self.roots:
            if registry_name is not None and root.name != registry_name:
                continue
            node = root._search_child(prefix or scope)
            if node is None:
                if prefix is not None:
                    continue  # an explicit scope this tree does not know
                node = root  # mmengine's switch_scope_and_registry falls back to the root too
            chain = []
            while node is not None:
                chain.append(node)
                node = node.parent
            yield root.name, chain

    def resolve(
        self, type_name: str, scope: str, registry_name: str | None = None
    ) -> list[tuple[str, Any]]:
        """Return (root registry name, object) for every tree that knows ``type_name``."""
        prefix, key = Registry.split_scope_key(type_name)
        found = []
        for root_name, chain in self._chains(scope, prefix, registry_name):
            for reg in chain:
                if key in reg._module_dict:
                    found.append((root_name, reg._module_dict[key]))
                    break
        if not found and prefix is not None:
            # mmengine's Registry.get falls back to an import path, as dumped by lazy configs.
            from mmengine.utils import get_object_from_string

            try:
                obj = get_object_from_string(type_name)
            except Exception:  # noqa: BLE001  (any import failure means "not found")
                obj = None
            if obj is not None and not inspect.ismodule(obj):
                found.append(('', obj))
        return found

    def names(self, scope: str, registry_name: str | None = None) -> set[str]:
        """All names visible from ``scope``, for suggestions."""
        return {
            name
            for _, chain in self._chains(scope, None, registry_name)
            for reg in chain
            for name in reg._module_dict
        }


def _walk_tree(registry: Registry) -> Iterator[Registry]:
    yield registry
    for child in registry._children.values():
        yield from _walk_tree(child)


def _runner_class(resolver: _Resolver, runner_type: Any) -> Any:
    from mmengine.runner import Runner

    if isinstance(runner_type, str):
        found = resolver.resolve(runner_type, 'rtdmd', 'runner')
        return found[0][1] if found else Runner
    return runner_type if inspect.isclass(runner_type) else Runner


def _parameters(obj: Any) -> set[str] | None:
    """Keyword-passable parameter names of a class constructor or function.

    Returns None when anything goes (``**kwargs``, or no introspectable signature).
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    if target is object.__init__:
        return set()  # a class without a constructor of its own takes no arguments
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if inspect.isclass(obj) and params:
        params = params[1:]  # self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) and \
            not _kwargs_take_nothing(target):
        return None
    return {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def _suggest(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, sorted(choices), n=_MAX_SUGGESTIONS)
    return f' Did you mean: {", ".join(matches)}?' if matches else ''


def _is_lazy_import(value: Any) -> bool:
    """True for names a new-style config imports (``from torch.optim import AdamW``)."""
    from mmengine.config.lazy import LazyAttr, LazyObject

    return isinstance(value, (LazyObject, LazyAttr)) or inspect.ismodule(value)


def _get_path(cfg_dict: dict, path: tuple[str, ...]) -> Any:
    node: Any = cfg_dict
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = dict.__getitem__(node, key)
    return node


def _kwargs_take_nothing(init: Any) -> bool:
    """``**kwargs`` that reach nothing able to take them (a typo there crashes at first use)."""
    from mmengine.hooks import CheckpointHook

    return init is CheckpointHook.__init__


# ------------------------------------------------------------------------ replaced types
_MISSING = object()


def _check_option_parents(cfg: Config, cfg_options: dict) -> None:
    """Refuse options that set a key below one that is (or is set to) a plain value, e.g.
    ``model.matching=None`` beside ``model.matching.type=...`` (mmengine would fail with a bare
    ``TypeError``); the message names both keys."""
    assigned: dict[str, object] = {}
    for key, value in cfg_options.items():
        parts = str(key).split('.')
        for depth in range(1, len(parts)):
            parent = '.'.join(parts[:depth])
            node = assigned.get(parent, _MISSING)
            if node is _MISSING:
                above = _get_path(cfg._cfg_dict, tuple(parts[:depth - 1]))
                if not isinstance(above, dict) or parts[depth - 1] not in above:
                    break  # absent (or inside a list): mmengine creates or indexes it
                node = dict.__getitem__(above, parts[depth - 1])
            if isinstance(node, (list, tuple)):
                break
            if not isinstance(node, dict):
                where = 'the options set it to' if parent in assigned else 'the config has'
                raise ConfigError([
                    f'{key}: cannot set a key below {parent!r}, which {where} {node!r}; set '
                    f'{parent!r} to a dict (e.g. {parent}.type=...) or drop one of the two '
                    f'options'])
        assigned[str(key)] = value


def _drop_keys_of_replaced_types(cfg: Config, cfg_options: dict) -> list[str]:
    """Before merging ``cfg_options``: for every ``X.type`` they change, drop the keys of the
    base's ``X`` that the new type does not accept and the options do not set. Returns (and
    logs) one line per changed type."""
    from mmengine.logging import print_log

    options = _dotted_options(cfg_options)
    resolver: _Resolver | None = None
    lines = []
    for key, new_type in options.items():
        if not key.endswith('.type') or not isinstance(new_type, str):
            continue
        parent_path = key[:-len('.type')]
        node = _get_path(cfg._cfg_dict, tuple(parent_path.split('.')))
        if not isinstance(node, dict) or dict.get(node, 'type') in (None, new_type):
            continue
        resolver = resolver or _Resolver()
        scope = dict.get(cfg._cfg_dict, 'default_scope') or 'rtdmd'
        found = resolver.resolve(new_type, scope)
        accepted: set[str] = set()
        for registry_name, obj in found:
            params = _parameters(obj)
            if params is None:
                accepted = None
                break
            accepted |= params | _REGISTRY_RESERVED_KEYS.get(registry_name, frozenset())
        if not found or accepted is None:
            continue  # unknown type (reported by validation) or **kwargs: keep everything
        user = {k[len(parent_path) + 1:].split('.')[0] for k in options
                if k.startswith(parent_path + '.')}
        drop = [k for k in dict.keys(node)
                if k not in accepted and k not in _BUILD_KEYS and k not in user]
        for k in drop:
            dict.__delitem__(node, k)
        if drop:
            lines.append(f'{parent_path}.type: {dict.get(node, "type")} -> {new_type}; dropped '
                         f'{", ".join(drop)} of the base config ({new_type} does not take them)')
    for line in lines:
        print_log(line, logger='current', level=30)
    return lines


def _dotted_options(options: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted_options(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat
