"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Every file the project writes for later use (checkpoints, ``last_checkpoint``, metrics, tables)
goes through :func:`atomic_write_bytes` or one of its wrappers: the data is written to a temporary
file in the same folder, flushed and ``fsync``-ed, renamed over the final name (``os.replace`` is
atomic on POSIX), and the folder is ``fsync``-ed so the rename itself survives a power cut. A
failure (a kill, a full disk) leaves the previous file untouched and at worst a stray temporary
file, whose name starts with ``.`` and ends with :data:`TMP_SUFFIX`.
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Callable
from typing import IO, Any

__all__ = ['TMP_SUFFIX', 'atomic_write', 'atomic_write_bytes', 'atomic_write_json',
           'atomic_write_text', 'fsync_dir', 'remove_stale_temporaries', 'temporary_name']

TMP_SUFFIX = '.rtdmd-tmp'


def temporary_name(path: str) -> str:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f'.{name}.{os.getpid()}{TMP_SUFFIX}')


def fsync_dir(folder: str) -> None:
    """Make a rename or a removal in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that replaces ``path``.

    Args:
        path: final file name; its folder is created if needed.
        write: called with the temporary file opened in binary mode.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); ``path`` is unchanged and the temporary
            file removed.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON (``indent=2`` unless given) to ``path`` atomically."""
    dump_kwargs.setdefault('indent', 2)
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + '\n')


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete temporary files an interrupted :func:`atomic_write` left in ``folder``.

    Returns:
        The removed paths.
    """
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith('.') and name.endswith(TMP_SUFFIX):
            path = osp.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed
