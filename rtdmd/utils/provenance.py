"""Where a result came from: the rtdmd version and, in a git checkout, the commit."""

from __future__ import annotations

import functools
import os.path as osp
import subprocess

from rtdmd.version import __version__

__all__ = ['git_commit', 'provenance']

_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout rtdmd is imported from (``+dirty`` with local changes);
    ``None`` outside a git checkout (an installed wheel) or without git."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=_ROOT, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')


def provenance() -> dict[str, str | None]:
    """``{'rtdmd_version': ..., 'git_commit': ...}`` for metrics files."""
    return {'rtdmd_version': __version__, 'git_commit': git_commit()}
