"""rtdmd: few-step, reward-aligned flow-matching generators (AC-DMD cold start + RTDMD)."""

from .version import __version__

__all__ = ['__version__']
