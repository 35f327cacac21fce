"""Pure tensor functions: every equation of the method lives here exactly once.

No ``nn.Module``, config, registry, process group or ``.item()`` in this package.
"""
