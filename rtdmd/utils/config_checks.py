"""Value checks of :func:`rtdmd.utils.config.validate_config`: types and nested dict keys.

For a dict with a resolved ``type``: every value must have the kind its parameter is annotated
with (or, unannotated, the kind of its default: a number, a bool) and be one of the values of a
``Literal`` annotation, NaN is refused, and untyped dict arguments whose keys the constructor
checks only once built hold known keys.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import types
import typing
from typing import Any

__all__ = ['dict_arg_errors', 'value_type_errors']

_BUILD_KEYS = frozenset({'type', '_scope_'})

_KIND_OF = {bool: 'bool', int: 'int', float: 'float', str: 'str', type(None): 'None',
            list: 'list', tuple: 'list', dict: 'dict'}
_KIND_NAMES = {'int': 'int', 'float': 'float', 'bool': 'bool', 'str': 'str', 'None': 'None',
               'list': 'list/tuple', 'dict': 'dict'}


def _value_kind(value: Any) -> str | None:
    for cls in type(value).__mro__:
        if cls in _KIND_OF:
            return _KIND_OF[cls]
    return None


def _annotation_kinds(ann: Any) -> set[str] | None:
    """The value kinds an annotation admits; None when it cannot be said (Any, a class, ...)."""
    import torch

    if ann is Any or ann is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        for arg in typing.get_args(ann):
            sub = _annotation_kinds(arg)
            if sub is None:
                return None
            kinds |= sub
        return kinds
    if origin is typing.Literal:
        return {k for v in typing.get_args(ann) if (k := _value_kind(v))} or None
    target = origin or ann
    if target is torch.Tensor:
        return set()  # configs never hold tensors; the other members of a Union decide
    if target is float:
        return {'float', 'int'}
    simple = {int: {'int'}, bool: {'bool'}, str: {'str'}, type(None): {'None'}}
    if target in simple:
        return simple[target]
    if target in (list, tuple, collections.abc.Sequence, collections.abc.Iterable,
                  collections.abc.MutableSequence):
        return {'list'}
    if target in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return {'dict'}
    return None


def _expected_kinds(obj: Any) -> dict[str, set[str]]:
    """Parameter -> admitted kinds, from annotations or (unannotated) numeric / bool defaults."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations: fall back to defaults only)
        hints = {}
    expected = {}
    for name, param in sig.parameters.items():
        kinds = _annotation_kinds(hints[name]) if name in hints else None
        if kinds is None and name not in hints:
            default = param.default
            if isinstance(default, bool):
                kinds = {'bool'}
            elif isinstance(default, (int, float)):
                kinds = {'int', 'float'}
        if kinds:
            expected[name] = kinds
    return expected


def _literal_choices(obj: Any) -> dict[str, tuple]:
    """Parameter -> its allowed values, for parameters annotated with a plain ``Literal``."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations: nothing to check)
        return {}
    return {name: typing.get_args(ann) for name, ann in hints.items()
            if typing.get_origin(ann) is typing.Literal}


def value_type_errors(node: dict, obj: Any, path: str) -> list[str]:
    errors = []
    expected = _expected_kinds(obj)
    choices = _literal_choices(obj)
    for key, value in dict.items(node):
        if isinstance(value, float) and math.isnan(value):
            errors.append(f'{path}.{key}: nan is not a usable value (a NaN would make every '
                          f'step non-finite)')
            continue
        if key in choices and value not in choices[key]:
            errors.append(f'{path}.{key}: must be one of {list(choices[key])}, got {value!r}')
            continue
        kinds = expected.get(key)
        kind = _value_kind(value)
        if not kinds or kind is None or key in _BUILD_KEYS:
            continue
        if kind not in kinds and not (kind == 'int' and 'float' in kinds):
            want = ' or '.join(sorted(_KIND_NAMES[k] for k in kinds))
            errors.append(f'{path}.{key}: expected {want}, got {type(value).__name__} '
                          f'{value!r}')
    return errors


def dict_arg_errors(node: dict, obj: Any, path: str) -> list[str]:
    """Keys of untyped dict arguments against the class's ``dict_arg_keys``
    (``{argument: keys}``, or ``{argument: {'*': keys}}`` for a dict of such dicts)."""
    declared = getattr(obj, 'dict_arg_keys', None) or {}
    errors = []
    for arg, keys in declared.items():
        value = dict.get(node, arg)
        if not isinstance(value, dict):
            continue
        if isinstance(keys, dict):  # {'*': keys}: every value is such a dict
            items = [(f'{path}.{arg}.{k}', v) for k, v in value.items() if isinstance(v, dict)]
            keys = keys['*']
        else:
            items = [(f'{path}.{arg}', value)]
        for where, sub in items:
            for key in sub:
                if key not in keys:
                    errors.append(f'{where}.{key}: {key!r} is not a key of {arg} '
                                  f'(valid: {", ".join(keys)}).' + _suggest(str(key), keys))
    return errors




def _suggest(word: str, choices: Any) -> str:
    matches = difflib.get_close_matches(word, sorted(choices), n=3)
    return f' Did you mean: {", ".join(matches)}?' if matches else ''
