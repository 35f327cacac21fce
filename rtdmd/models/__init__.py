from . import backbones, distillers, losses, samplers  # noqa: F401  (register modules)
