"""Sample grids of the generator during training, into TensorBoard and the work dir.

Every ``interval`` iterations (and after the last, in a run longer than one interval) the
generator samples the same prompts from the same noise (``model.generate(prompts, seed)``: a
fixed seed gives fixed initial and transition noise), so the grids of a run show how one set
of samples evolves. Points (the analytic world: a latent of one axis) become a scatter coloured
by prompt; images become a grid captioned with their prompts. The figure goes to every backend
of the runner's visualizer (``add_image``: TensorBoard, the local backend) and to
``<work_dir>/vis/samples_iter_<N>.png``.
"""

from __future__ import annotations

import io
import os.path as osp
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor

from rtdmd.registry import HOOKS
from rtdmd.utils.atomic import atomic_write_bytes

from .prompts import as_prompts, distinct_prompts

__all__ = ['SampleVisualizationHook', 'figure_to_array', 'image_grid_figure', 'scatter_figure']

@HOOKS.register_module()
class SampleVisualizationHook(Hook):
    """Log sample grids of the generator every ``interval`` iterations.

    Args:
        interval: iterations between grids, and one after the last iteration of a run longer
            than ``interval``; a shorter run (a smoke test) draws none, and says so.
        prompts: the prompts to sample (class ids in the analytic world); ``None`` takes the
            first ``num_prompts`` distinct prompts of the training dataset.
        num_prompts: how many prompts when ``prompts`` is ``None``.
        samples_per_prompt: samples of each prompt; ``None``: 512 for points, 1 for images.
        seed: the noise seed, the same at every grid.
        out_dir: folder under the work dir for the PNG files.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 500, prompts: Sequence[Any] | None = None,
                 num_prompts: int = 4, samples_per_prompt: int | None = None, seed: int = 0,
                 out_dir: str = 'vis') -> None:
        if interval < 1 or num_prompts < 1 or (samples_per_prompt is not None
                                                and samples_per_prompt < 1):
            raise ValueError(f'interval, num_prompts and samples_per_prompt must be >= 1, got '
                             f'{interval}, {num_prompts}, {samples_per_prompt}')
        self.interval = interval
        self.prompts = list(prompts) if prompts is not None else None
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.out_dir = out_dir
        self.enabled = True  # before_train turns it off for a model that is not a generator

    def before_train(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.enabled = callable(getattr(model, 'generate', None)) and hasattr(model, 'backbone')
        if not self.enabled:  # e.g. a shapes teacher's VAE or flow-matching trainer
            runner.logger.info(
                f'SampleVisualizationHook: {type(model).__name__} is not a generator '
                f'(no generate() and backbone): no sample grids')
        elif runner.max_iters - runner.iter < self.interval:
            runner.logger.info(
                f'SampleVisualizationHook: {runner.max_iters - runner.iter} iterations to run, '
                f'fewer than its interval {self.interval}: no sample grids (set '
                f'default_hooks.visualization.interval to draw some)')

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        # The last iteration's grid shows a long run's final state; in a run shorter than one
        # interval (tests, smoke runs) sampling and drawing would cost more than the run.
        last = self.is_last_train_iter(runner) and runner.max_iters > self.interval
        if self.enabled and (self.every_n_train_iters(runner, self.interval) or last):
            self.visualize(runner, runner.iter + 1)

    def visualize(self, runner: Any, step: int) -> np.ndarray | None:
        """Sample, draw and log one grid; returns the RGB image (main process only).

        Every rank samples (a sharded generator or text encoder gathers its weights from all
        ranks, so rank 0 alone would wait forever); only the main process draws and writes.
        """
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        prompts = self._prompts(runner)
        points = len(model.backbone.latent_shape()) == 1
        per_prompt = self.samples_per_prompt or (512 if points else 1)
        repeated = [p for p in prompts for _ in range(per_prompt)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                samples = model.generate(as_prompts(repeated), seed=self.seed).float().cpu()
        finally:
            model.train(was_training)
        if not is_main_process():
            return None
        if samples.ndim == 2:
            fig = scatter_figure(samples, [prompts.index(p) for p in repeated],
                                 [str(p) for p in prompts], f'generator samples, iter {step}')
        else:
            fig = image_grid_figure(samples, [str(p) for p in repeated],
                                    f'generator samples, iter {step}')
        image = figure_to_array(fig)
        runner.visualizer.add_image('samples', image, step=step)
        path = osp.join(runner.work_dir, self.out_dir, f'samples_iter_{step}.png')
        atomic_write_bytes(path, _png_bytes(image))
        return image

    def _prompts(self, runner: Any) -> list[Any]:
        if self.prompts is None:
            found, _ = distinct_prompts(runner.train_dataloader.dataset, self.num_prompts)
            if not found:
                raise ValueError('SampleVisualizationHook: the training dataset has no prompt; '
                                 'set prompts=[...]')
            self.prompts = found
        return self.prompts


def scatter_figure(x: Tensor, labels: Sequence[int], names: Sequence[str], title: str) -> Any:
    """Points (first two coordinates) coloured by prompt, with a legend and labelled axes."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    x = x.numpy()
    labels = np.asarray(labels)
    for k, name in enumerate(names):
        sel = labels == k
        ax.scatter(x[sel, 0], x[sel, 1] if x.shape[1] > 1 else np.zeros(sel.sum()), s=3,
                   alpha=0.6, color=f'C{k % 10}', label=f'prompt {name}')
    ax.set_xlabel('x[0]')
    ax.set_ylabel('x[1]')
    ax.set_aspect('equal', adjustable='datalim')
    ax.legend(loc='best', fontsize=7, markerscale=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def image_grid_figure(images: Tensor, captions: Sequence[str], title: str,
                      columns: int = 4) -> Any:
    """Images in [0, 1] ``(N, 3, H, W)`` in a grid, each captioned (wrapped) with its prompt
    (a caption's later lines, e.g. a score, are kept whole)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = images.shape[0]
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    for ax, image, caption in zip(axes.ravel(), images, captions, strict=False):
        ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(_wrap(caption), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _wrap(caption: str, width: int = 30, max_lines: int = 3) -> str:
    """The caption's first line (the prompt) wrapped to ``max_lines``; later lines (a score)
    kept as they are."""
    first, *rest = caption.split('\n')
    return '\n'.join([*textwrap.wrap(first, width)[:max_lines], *rest])


def figure_to_array(fig: Any) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 array of a matplotlib figure (the figure is closed)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def _png_bytes(image: np.ndarray) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, image, format='png')
    return buffer.getvalue()
