from . import backbones, distillers, losses, samplers, teachers  # noqa: F401  (register modules)
