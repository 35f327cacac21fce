"""Fault injection for training runs: kill or fail a forked run at an exact write, or at random.

A run is started with :func:`run_forked`: the parent has imported everything once, each run is
a forked child (so it starts in well under a second) that executes ``tools/train.py``'s ``main``
with its own arguments, output going to a log file. Faults are installed in the child only:

- :class:`WriteFault` wraps :func:`open` so the ``nth`` file opened for writing whose name
  contains ``match`` writes ``fraction`` of its first write and then is SIGKILLed
  (``action='kill'``) or gets ``OSError(ENOSPC)`` (``action='enospc'``, a full disk);
- :class:`ReplaceFault` SIGKILLs the child right before the ``nth`` ``os.replace`` onto a name
  containing ``match`` (between writing a file and committing it);
- ``kill_after_s`` SIGKILLs the child from the parent after that many seconds (random kills).

:func:`compare_checkpoints` then tells whether two runs ended bit-identical.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import multiprocessing as mp
import os
import os.path as osp
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ['ForkedRun', 'ReplaceFault', 'WriteFault', 'compare_checkpoints', 'load_train_main',
           'run_forked']

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@dataclass
class WriteFault:
    """Fail the ``nth`` (1-based) open-for-writing of a file whose path contains ``match``."""

    match: str
    nth: int = 1
    action: str = 'kill'  # or 'enospc'
    fraction: float = 0.5


@dataclass
class ReplaceFault:
    """SIGKILL right before the ``nth`` ``os.replace`` whose target contains ``match``."""

    match: str
    nth: int = 1


@dataclass
class ForkedRun:
    """Outcome of one forked run: exit code (``-9`` when killed) and its log."""

    exitcode: int | None
    log: str

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


def load_train_main() -> Any:
    """``main`` of ``tools/train.py`` (loaded from its file: tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location('_rtdmd_train_tool',
                                                  osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class _FaultyFile:
    """A file proxy whose first write is cut short by the fault."""

    def __init__(self, f: Any, fault: WriteFault) -> None:
        self._f, self._fault = f, fault

    def write(self, data: Any) -> int:
        cut = int(len(data) * self._fault.fraction)
        self._f.write(data[:cut])
        self._f.flush()
        if self._fault.action == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _install(faults: list[Any]) -> None:
    real_open, real_replace = builtins.open, os.replace
    counts = [0] * len(faults)

    def faulty_open(file: Any, mode: str = 'r', *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in 'wax'):
            for i, fault in enumerate(faults):
                if isinstance(fault, WriteFault) and fault.match in str(file):
                    counts[i] += 1
                    if counts[i] == fault.nth:
                        return _FaultyFile(f, fault)
        return f

    def faulty_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        for i, fault in enumerate(faults):
            if isinstance(fault, ReplaceFault) and fault.match in str(dst):
                counts[i] += 1
                if counts[i] == fault.nth:
                    os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)

    builtins.open = faulty_open
    os.replace = faulty_replace


def _redirect_loggers() -> None:
    """Point every console handler the parent created (mmengine's loggers among them) at this
    child's log: a logger made by an earlier test would otherwise still write to the parent's
    (captured) stream."""
    import logging

    from mmengine.logging import MMLogger

    loggers = [logging.getLogger(), *MMLogger._instance_dict.values(),
               *(lg for lg in logging.Logger.manager.loggerDict.values()
                 if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setStream(sys.stdout)  # both descriptors lead to the log


def _child(main: Any, argv: list[str], faults: list[Any], log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, 'w', buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, 'w', buffering=1, closefd=False)
    _redirect_loggers()
    _install(faults)
    try:
        main(argv)
    except SystemExit as err:
        if err.code not in (None, 0):
            print(err.code if isinstance(err.code, str) else f'exit {err.code}', file=sys.stderr)
            sys.stderr.flush()
            os._exit(1 if not isinstance(err.code, int) else err.code)
    except BaseException as err:  # noqa: BLE001  (reported through the exit code and log)
        import traceback

        traceback.print_exc()
        print(f'{type(err).__name__}: {err}', file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_forked(main: Any, argv: list[str], log_path: str, faults: list[Any] | None = None,
               kill_after_s: float | None = None, timeout_s: float = 600) -> ForkedRun:
    """Run ``main(argv)`` in a forked child with ``faults``; wait for it (or kill it)."""
    torch.set_num_threads(1)  # forked children must not inherit a live OpenMP pool
    start = len(open(log_path).read()) if osp.isfile(log_path) else 0
    proc = mp.get_context('fork').Process(target=_child,
                                          args=(main, argv, list(faults or []), log_path))
    proc.start()
    proc.join(kill_after_s if kill_after_s is not None else timeout_s)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    with open(log_path) as f:
        log = f.read()[start:]
    return ForkedRun(proc.exitcode, log)


def _tensors(obj: Any, prefix: str = '') -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f'{prefix}.{k}' if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f'{prefix}[{i}]'))
    return out


def compare_checkpoints(a: str, b: str) -> list[str]:
    """Names of the tensors (weights, optimizer, EMA) that differ between two checkpoints."""
    from rtdmd.utils.checkpoint_io import load_checkpoint_file

    ta, tb = ({k: v for k, v in _tensors({key: load_checkpoint_file(p).get(key) for key in
                                          ('state_dict', 'optimizer', 'ema_state')}).items()}
              for p in (a, b))
    names = sorted(set(ta) | set(tb))
    return [n for n in names if n not in ta or n not in tb or ta[n].shape != tb[n].shape
            or not torch.equal(ta[n], tb[n])]
