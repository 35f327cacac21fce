"""rtdmd: few-step, reward-aligned flow-matching generators (AC-DMD cold start + RTDMD)."""

from .version import __version__

__all__ = ['__version__', 'CPSScheduler']


def __getattr__(name: str) -> type:
    # Lazy (diffusers is slow to import). Exported pipelines name ["rtdmd", "CPSScheduler"] in
    # model_index.json; diffusers then looks up CPSScheduler here and, to find its load method,
    # the diffusers base classes (SchedulerMixin) on the same module.
    if name in ('CPSScheduler', 'SchedulerMixin'):
        from .models.samplers import cps_scheduler
        return getattr(cps_scheduler, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
