"""An evaluation's results into TensorBoard: metrics as scalars, the table as text, plots as images.

A pipeline of stages trains each stage with its own Runner (its own TensorBoard log); the
comparison at the end belongs to none of them, so it gets its own log under the evaluation
folder, written through mmengine's ``TensorboardVisBackend``. Open the pipeline's work dir in
TensorBoard to see the stages' training curves and the comparison side by side.
"""

from __future__ import annotations

import math
import os.path as osp
from collections.abc import Mapping

__all__ = ['log_report']


def log_report(log_dir: str, metrics: Mapping[str, Mapping[str, float]], table: str,
               images: Mapping[str, str] | None = None, step: int = 0) -> None:
    """Write ``metrics`` (``{model: {metric: value}}``), ``table`` and PNG ``images``.

    Scalars are tagged ``<metric>/<model>`` (one chart per metric, a line per model); entries
    whose name starts with ``_`` and non-finite values are skipped (TensorBoard drops NaN).
    """
    import matplotlib.pyplot as plt
    from mmengine.visualization import TensorboardVisBackend

    backend = TensorboardVisBackend(save_dir=log_dir)
    scalars = {f'{metric}/{model}': float(value)
               for model, row in metrics.items() if not str(model).startswith('_')
               for metric, value in row.items()
               if not str(metric).startswith('_') and isinstance(value, (int, float))
               and math.isfinite(float(value))}
    backend.add_scalars(scalars, step=step)
    # Markdown tables render in TensorBoard's text tab.
    backend.experiment.add_text('comparison_table', table, global_step=step)
    for name, path in (images or {}).items():
        if osp.isfile(path):
            backend.add_image(name, (plt.imread(path)[..., :3] * 255).astype('uint8'), step=step)
    backend.close()
