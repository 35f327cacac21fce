"""Light helpers for the command-line tools: nothing here imports torch, mmengine or diffusers.

The tools parse their arguments before any heavy import, so ``--help`` and argument errors come
back in well under a second; mmengine's ``DictAction`` (``--cfg-options``) is imported only when
the option is actually given.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ['LazyDictAction']


class LazyDictAction(argparse.Action):
    """``--cfg-options k=v ...`` parsed by mmengine's ``DictAction``, imported on first use."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        from mmengine.config import DictAction

        DictAction(self.option_strings, self.dest, nargs=self.nargs)(
            parser, namespace, values, option_string)
