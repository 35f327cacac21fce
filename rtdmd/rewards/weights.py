"""Where the reward-model weights live, and a clear error when they are not there.

No reward model reaches for the network: every learned scorer reads its weights from a local
folder under one root, the ``root`` argument of the scorer, else the ``RTDMD_REWARD_WEIGHTS``
environment variable, else ``./weights/rewards``. Standard library only, so importing it is free.

A scorer lists the files it reads in :meth:`~rtdmd.rewards.base.RewardScorer.required_weights`
and its constructor checks that list; :func:`check_reward_weights` checks the same list from a
REWARDS config without building anything, so a run can fail on a missing file before it spends
hours on the stages that come first.
"""

from __future__ import annotations

import inspect
import os
import os.path as osp
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

DEFAULT_REWARD_WEIGHTS_ROOT = osp.join('weights', 'rewards')


class MissingRewardWeightsError(FileNotFoundError):
    """A reward model's weight folder or file is missing or incomplete."""


def reward_weights_root(root: str | None = None) -> str:
    """``root`` if given, else ``$RTDMD_REWARD_WEIGHTS``, else ``weights/rewards``."""
    return root or os.environ.get('RTDMD_REWARD_WEIGHTS') or DEFAULT_REWARD_WEIGHTS_ROOT


class WeightFiles(NamedTuple):
    """Files a reward scorer reads from one folder (the arguments of :func:`require_files`).

    Attributes:
        folder: the folder that must hold ``files``.
        files: file names relative to ``folder``; ``'a|b'`` is satisfied by either.
        source: where the files come from (a Hugging Face repo id or a URL), for the message.
        scorer: the scorer that reads them, when it is not the one being checked (members of a
            :class:`~rtdmd.rewards.multi.MultiReward`); ``None``: the checked scorer.
    """

    folder: str
    files: Sequence[str]
    source: str
    scorer: str | None = None

    @classmethod
    def single(cls, path: str, source: str) -> WeightFiles:
        """The one file ``path``."""
        return cls(osp.dirname(path), (osp.basename(path),), source)


def resolve_weights_path(path: str, root: str | None = None) -> str:
    """``path`` if it is absolute, else ``path`` under :func:`reward_weights_root` ``(root)``."""
    return path if osp.isabs(path) else osp.join(reward_weights_root(root), path)


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
    hint = (f' Get them with\n  hf download {source} --local-dir {path}\n'
            if ' ' not in source and '://' not in source else '\n')
    raise MissingRewardWeightsError(
        f'the {scorer} reward weights are not at {path!r} (missing:\n  {shown}\n).\n'
        f'They come from {source}.{hint}'
        f'Put them under one folder and point rtdmd at it: export '
        f'RTDMD_REWARD_WEIGHTS=<that folder> or pass root=<that folder> to the scorer.')


def require_weights(needs: Sequence[WeightFiles], scorer: str) -> None:
    """:func:`require_files` for each entry of ``needs``; every incomplete one is reported.

    Args:
        needs: what the scorer reads (its :meth:`RewardScorer.required_weights`).
        scorer: the scorer that needs them, for the message (an entry's own ``scorer`` wins).

    Raises:
        MissingRewardWeightsError: one paragraph per entry with a missing file, in order.
    """
    problems = []
    for need in needs:
        try:
            require_files(need.folder, need.files, need.source, need.scorer or scorer)
        except MissingRewardWeightsError as err:
            problems.append(str(err))
    if problems:
        raise MissingRewardWeightsError('\n\n'.join(problems))


def _reward_class(kind: Any) -> type:
    """The scorer class of a config's ``type``: a class, or a name in ``REWARDS``."""
    if inspect.isclass(kind):
        return kind
    from rtdmd.registry import REWARDS  # lazy: the registry imports mmengine

    cls = REWARDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise KeyError(f'{kind!r} is not in the rtdmd reward registry (REWARDS); a reward config '
                       "needs type='<registered scorer name>' or the scorer class")
    return cls


def bind_reward_config(reward_cfg: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    """``(scorer class, constructor arguments with its defaults applied)`` of a REWARDS config,
    without building it: what the class-level checks (``required_weights``,
    ``is_differentiable``) take.

    Raises:
        KeyError: if the config names no registered scorer.
        TypeError: if the config has arguments the constructor does not take.
    """
    args = dict(reward_cfg)
    cls = _reward_class(args.pop('type', None))
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop ``self``
    var_kw = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(args) - {p.name for p in params}) if not var_kw else []
    if unknown:
        raise TypeError(f'{cls.__name__} got unknown arguments {unknown}; it takes '
                        f'{[p.name for p in params]}')
    bound = inspect.Signature(params).bind_partial(**args)
    bound.apply_defaults()
    init_args = dict(bound.arguments)
    for name in var_kw:  # a ``**kwargs`` constructor: pass its extra arguments on flat
        init_args.update(init_args.pop(name))
    return cls, init_args


def config_required_weights(reward_cfg: Mapping[str, Any]) -> list[WeightFiles]:
    """The weight files the scorer built from a REWARDS config would read, without building it.

    The config's arguments are bound to the scorer's constructor with its defaults applied and
    passed to the class's ``required_weights``; every entry names the scorer that reads it.

    Raises:
        KeyError: if the config names no registered scorer.
        TypeError: if the config has arguments the constructor does not take.
    """
    cls, init_args = bind_reward_config(reward_cfg)
    required = getattr(cls, 'required_weights', None)
    needs = [] if required is None else required(**init_args)
    return [need if need.scorer else need._replace(scorer=cls.__name__) for need in needs]


def config_is_differentiable(reward_cfg: Mapping[str, Any]) -> bool:
    """Whether the scorer a REWARDS config builds is differentiable, without building it."""
    cls, init_args = bind_reward_config(reward_cfg)
    return bool(cls.is_differentiable(**init_args))


def check_reward_weights(reward_cfg: Mapping[str, Any]) -> None:
    """Pre-flight check: the weight files of the scorer a REWARDS config builds are all there.

    Builds nothing and loads no model library (the scorers import those in their constructors),
    so a pipeline can check the rewards of a later stage before the first one starts. The
    constructor checks the same files with the same message (both use the scorer's
    ``required_weights``); a :class:`~rtdmd.rewards.multi.MultiReward` config checks its members.

    Args:
        reward_cfg: ``dict(type='CLIPScore', root=..., ...)`` (``type`` may be the class).

    Raises:
        MissingRewardWeightsError: naming the first missing file, as the constructor would.
        KeyError: if the config names no registered scorer.
        TypeError: if the config has arguments the constructor does not take.
    """
    # Every entry names its scorer, so the fallback name is never shown.
    require_weights(config_required_weights(reward_cfg), scorer='')


def check_all_reward_weights(reward_cfgs: Iterable[Mapping[str, Any]]) -> None:
    """:func:`check_reward_weights` for several rewards, reporting every missing one at once
    (so one look at the message tells everything to download).

    Raises:
        MissingRewardWeightsError: one message per reward whose files are missing.
    """
    problems = []
    for cfg in reward_cfgs:
        try:
            check_reward_weights(cfg)
        except MissingRewardWeightsError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise MissingRewardWeightsError(problems[0])
    if problems:
        raise MissingRewardWeightsError(f'{len(problems)} reward models are missing weights:\n\n'
                                        + '\n\n'.join(problems))
