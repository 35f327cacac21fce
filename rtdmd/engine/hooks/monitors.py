"""Reward-hacking monitors of stage 2: does the generator leave what it was distilled to be?

A policy-gradient stage can raise its reward by leaving the teacher's support (the analytic
world's GRPO-only run ends 10 standard deviations off it) or by collapsing onto a few samples the
reward likes; the reward itself never shows it. Every ``interval`` epochs (and after the last)
:class:`RewardHackingMonitorHook` samples a fixed probe set (fixed prompts, fixed noise, K samples
per prompt) and compares it with the same probe of the *reference*, the generator as stage 2
starts (the AC-DMD student: the fresh LoRA is zero), captured in ``before_train`` and kept in
every checkpoint, so a resumed run compares with the same reference.

Monitors (``monitor/<name>`` scalars in every visualizer backend, TensorBoard included; a
WARNING names the monitor, its value, its threshold and what it suggests):

- ``drift``: the energy distance between the student's and the reference's final latents ``x0``
  of each probe prompt, over the reference's mean pairwise distance (mean over prompts; 0.45 is
  a shift by the reference's spread). A set distance, not a paired one, so a generator that
  only re-assigns noise to samples does not drift; unbiased for any K and latent size
  (:func:`energy_distance`), where a Frechet distance of K << D samples is not; it needs no
  learned feature network and no fake score (GRPO-only trains none), so it means the same on
  every backbone.
- ``diversity_ratio``: the mean pairwise distance of a prompt's K samples over the reference's
  (mode collapse shows as a ratio far below 1).
- ``reward_gap``: how much more the training reward rose than a held-out one, each in units of
  the reference's standard deviation of it: the training reward on held-out prompts (the
  training dataset's ``split='heldout'``, or a configured dataset), or a second scorer
  (``heldout_reward``) on the training prompts. Without either it is skipped, saying so once.
- ``x0_norm_ratio``: the mean RMS value of ``x0`` over the reference's (latents blown up or
  shrunk); for images also ``saturation_shift`` and ``brightness_shift``: the change of the
  decoded images' mean HSV saturation and Rec. 601 luma (a reward model's colour or exposure
  preference taken to the extreme); ``edge_energy_ratio``: the mean absolute difference of
  neighbouring pixels over the reference's (fine-scale contrast: streaks, speckle, fragmented
  objects, the high-frequency patterns a reward model can be fooled by; it fires on a rise
  only, as blur is the fidelity metric's to see); and ``rare_colour_shift``: how much more of
  the pixels lie in colours the reference almost never draws (joint RGB bins of 32 levels
  holding under 0.1 % of the reference's pixels over the probe prompts) than the reference's
  own, a share of the image in [-1, 1]. Recolouring an object with another colour the
  reference draws costs nothing; smears, fringes and off-palette colours count (the shapes
  world's GRPO-only hack: a background streaked with colour and objects broken into fragments,
  which no latent distance or colour mean sees in time). A monitor warns after ``patience``
  probes in a row past its threshold. ``colour_shift``, the total variation distance of the
  colour histograms (mean over prompts), is logged without a threshold: it also counts the
  reward's legitimate recolouring.

The probe runs under ``no_grad`` in eval mode, on every rank (sharded networks need all ranks in
a forward; every rank computes the same probe), draws its noise from counter-based streams of its
own, and restores Python's, NumPy's and torch's global random states afterwards: training runs
exactly as without the hook. Only the main process logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor

from rtdmd.evaluation.sample_stats import (
    brightness,
    colour_histogram,
    edge_energy,
    energy_distance,
    mean_pairwise_distance,
    rare_colour_mass,
    rms_norm,
    saturation,
    total_variation,
)
from rtdmd.models.samplers.noise import GeneratorNoise
from rtdmd.registry import DATASETS, HOOKS, REWARDS
from rtdmd.utils.rng import global_rng_states, set_global_rng_states, stream

from .prompts import as_prompts, distinct_prompts

__all__ = ['THRESHOLD_DEFAULTS', 'RewardHackingMonitorHook', 'monitor_values']

#: Conservative defaults: a healthy reward-tilted student stays well inside them (see
#: docs/shapes_world.md for the traces of RTDMD and GRPO-only).
THRESHOLD_DEFAULTS = dict(drift=0.5, diversity=0.5, reward_gap=2.0, x0_norm=1.5,
                          saturation=0.15, brightness=0.15, edge_energy=1.25, rare_colour=0.1)

#: monitor -> (threshold key, kind of bound, what a firing suggests). Kinds: ``max`` fires above
#: the threshold, ``min`` below it, ``abs`` when ``|value|`` exceeds it, ``ratio`` outside
#: ``[1 / threshold, threshold]``.
MONITORS = {
    'drift': ('drift', 'max', 'the samples moved away from the stage-2 start by about their '
              'own spread or more: the generator may be leaving the teacher\'s support'),
    'diversity_ratio': ('diversity', 'min', 'the samples of a prompt became much more alike '
                        'than at the start: mode collapse'),
    'reward_gap': ('reward_gap', 'max', 'the training reward rose much more than the held-out '
                   'one: the generator may be exploiting the training reward'),
    'x0_norm_ratio': ('x0_norm', 'ratio', 'the size of the final latents changed: outputs '
                      'drifting off the data manifold (blown-out or washed-out samples)'),
    'saturation_shift': ('saturation', 'abs', 'the colour saturation of the images changed: '
                         'a colour preference of the reward taken to the extreme'),
    'brightness_shift': ('brightness', 'abs', 'the brightness of the images changed: an '
                         'exposure preference of the reward taken to the extreme'),
    'edge_energy_ratio': ('edge_energy', 'max', 'the images gained fine-scale contrast: '
                          'streaks, speckle, fragmented objects or high-frequency patterns '
                          'that a reward model can be fooled by'),
    'rare_colour_shift': ('rare_colour', 'max', 'more of the pixels are in colours the '
                          'stage-2 start almost never drew: artefacts, smears or off-palette '
                          'colours the reward does not see'),
}

@HOOKS.register_module()
class RewardHackingMonitorHook(Hook):
    """Log the reward-hacking monitors every ``interval`` epochs (see module docstring).

    Args:
        interval: epochs (stage-2 iterations) between probes; one more after the last epoch.
        prompts: probe prompts (class ids in the analytic world); ``None`` takes
            ``num_prompts`` distinct prompts spread evenly over the training dataset.
        num_prompts: how many probe prompts when ``prompts`` is ``None``.
        samples_per_prompt: K samples per probe prompt, each from its own noise; ``None``: 256
            for points, 4 for images.
        seed: the probe's noise seed, the same at every probe.
        heldout_prompts: prompts for the held-out reward: ``'auto'`` (the training dataset's
            config with ``split='heldout'``, when it has a ``split``), a dataset config, a list
            of prompts, or ``None``. Prompts that also occur in the training dataset are left out.
        heldout_reward: a reward scorer config scored on the training probe prompts as the
            held-out reward; when set it is used instead of ``heldout_prompts``.
        patience: a monitor warns once it is past its threshold at ``patience`` probes in a
            row (``monitor/crossing`` counts the monitors past it at this probe,
            ``monitor/firing`` those warning). The probe is a few images per prompt, so one
            probe past a threshold can be noise (a reward step the next one undoes); a hack
            persists. 1 warns at the first crossing.
        thresholds: ``{monitor: value or None (off)}`` over :data:`THRESHOLD_DEFAULTS`:
            ``drift`` (max relative energy distance; 0.45 is a shift by the reference's
            spread), ``diversity`` (min ratio, in (0, 1)),
            ``reward_gap`` (max, in reference standard deviations), ``x0_norm`` (max factor
            either way, > 1), ``saturation`` and ``brightness`` (max absolute change, in [0, 1]),
            ``edge_energy`` (max factor of rise, > 1), ``rare_colour`` (max rise of the share
            of pixels in rare colours, in (0, 1]).
    """

    priority = 'LOW'
    dict_arg_keys = {'thresholds': tuple(THRESHOLD_DEFAULTS)}

    def __init__(self, interval: int = 10, prompts: Sequence[Any] | None = None,
                 num_prompts: int = 4, samples_per_prompt: int | None = None, seed: int = 0,
                 heldout_prompts: str | dict | Sequence[Any] | None = 'auto',
                 heldout_reward: dict | None = None, patience: int = 2,
                 thresholds: dict | None = None) -> None:
        for key, value in (('interval', interval), ('num_prompts', num_prompts),
                           ('patience', patience)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'RewardHackingMonitorHook.{key} must be an integer >= 1, got '
                                 f'{value!r}')
        if samples_per_prompt is not None and samples_per_prompt < 2:
            raise ValueError('RewardHackingMonitorHook.samples_per_prompt must be >= 2 (the '
                             f'diversity is a mean over pairs) or None, got {samples_per_prompt}')
        if isinstance(heldout_prompts, str) and heldout_prompts != 'auto':
            raise ValueError("RewardHackingMonitorHook.heldout_prompts must be 'auto', a dataset "
                             f'config, a list of prompts or None, got {heldout_prompts!r}')
        if heldout_reward is not None and (not isinstance(heldout_reward, dict)
                                           or 'type' not in heldout_reward):
            raise ValueError('RewardHackingMonitorHook.heldout_reward must be a reward config '
                             f'dict(type=...) or None, got {heldout_reward!r}')
        self.thresholds = check_thresholds(thresholds)
        self.interval = interval
        self.patience = patience
        self.streaks: dict[str, int] = {}  # monitor -> probes in a row past its threshold
        self.prompts = list(prompts) if prompts is not None else None
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.heldout_prompts = heldout_prompts
        self.heldout_reward = heldout_reward
        self.reference: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []  # every probe's values, in epoch order
        self._sets: dict[str, Any] | None = None
        self._heldout_scorer: Any = None

    # ------------------------------------------------------------------------------- hooks
    def before_train(self, runner: Any) -> None:
        if self.reference is None:  # a resumed run has its reference from the checkpoint
            self.reference = self.probe(runner)
            if runner.iter > 0:
                runner.logger.warning('RewardHackingMonitorHook: the checkpoint holds no '
                                      'monitor reference; comparing with the resumed model')
        if runner.iter == 0:
            self._log(runner, 0, monitor_values(self.reference, self.reference))

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self._log(runner, runner.iter + 1, monitor_values(self.probe(runner),
                                                              self.reference))

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if self.reference is not None:
            checkpoint['reward_monitor_reference'] = self.reference
            checkpoint['reward_monitor_streaks'] = dict(self.streaks)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False) and 'reward_monitor_reference' in checkpoint:
            self.reference = checkpoint['reward_monitor_reference']
            self.streaks = dict(checkpoint.get('reward_monitor_streaks', {}))

    # ------------------------------------------------------------------------------ probing
    def probe(self, runner: Any) -> dict[str, Any]:
        """The probe's statistics of the current generator (global RNG states untouched)."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        sets = self._probe_sets(runner)
        states = global_rng_states()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = self._sample_set(model, sets['train'], 'train', score=True)
                if sets['heldout_scorer'] is not None:
                    out['heldout'] = self._scorer(out['_images'].device)(out['_images'],
                                                                         *sets['train'])
                elif sets['heldout'] is not None:
                    held = self._sample_set(model, sets['heldout'], 'heldout', score=True)
                    out['heldout'] = held['reward']
        finally:
            model.train(was_training)
            set_global_rng_states(states)
        out.pop('_images', None)
        return out

    def _sample_set(self, model: Any, prompt_set: tuple, split: str, score: bool
                    ) -> dict[str, Any]:
        """K samples of every prompt of ``(prompts, metadata)`` and their statistics."""
        prompts, metadata = prompt_set
        backbone, k = model.backbone, self._k(model)
        latents, images, rewards = [], [], []
        for i, (prompt, meta) in enumerate(zip(prompts, metadata, strict=True)):
            batch = as_prompts([prompt] * k)
            metas = None if meta is None else [meta] * k
            cond = backbone.encode_prompts(batch)
            gen = stream(self.seed, 'reward_monitor', split, i, device=model.iteration.device)
            x0 = model.sampler.rollout(backbone, cond, GeneratorNoise(gen)).sample
            decoded = backbone.decode(x0).float()
            latents.append(x0.float().flatten(1).cpu())
            images.append(decoded)
            if score and hasattr(model, 'reward'):
                rewards.append(model.reward(decoded, batch, metas).float().cpu())
        x0 = torch.stack(latents)  # (P, K, D)
        out = dict(x0=x0, x0_rms=rms_norm(x0.flatten(0, 1)).view(x0.shape[:2]),
                   reward=torch.stack(rewards) if rewards else None,
                   _images=torch.cat(images))
        if images[0].ndim == 4:  # decoded images (points decode to points)
            flat = out['_images']
            out['saturation'] = saturation(flat).cpu().view(x0.shape[:2])
            out['brightness'] = brightness(flat).cpu().view(x0.shape[:2])
            out['edges'] = edge_energy(flat).cpu().view(x0.shape[:2])
            out['colour_hist'] = colour_histogram(flat).cpu().view(*x0.shape[:2], -1).mean(1)
        return out

    def _scorer(self, device: torch.device) -> Any:
        """The held-out scorer, built on first use on the model's device."""
        if self._heldout_scorer is None:
            self._heldout_scorer = REWARDS.build(self.heldout_reward).eval().to(device)

        def score(images: Tensor, prompts: list, metadata: list) -> Tensor:
            k = images.shape[0] // len(prompts)
            batch = [p for p in prompts for _ in range(k)]
            metas = None if metadata[0] is None else [m for m in metadata for _ in range(k)]
            return self._heldout_scorer(images, as_prompts(batch), metas).float().cpu().view(
                len(prompts), k)

        return score

    def _k(self, model: Any) -> int:
        if self.samples_per_prompt is not None:
            return self.samples_per_prompt
        return 256 if len(model.backbone.latent_shape()) == 1 else 4

    def _probe_sets(self, runner: Any) -> dict[str, Any]:
        """The training probe prompts, and where the held-out reward comes from (once)."""
        if self._sets is not None:
            return self._sets
        dataset = runner.train_dataloader.dataset
        train = (_with_metadata(self.prompts, dataset) if self.prompts is not None
                 else _spread(distinct_prompts(dataset), self.num_prompts))
        if not train[0]:
            raise ValueError('RewardHackingMonitorHook: the training dataset has no prompt; '
                             'set prompts=[...]')
        heldout, note = None, None
        if self.heldout_reward is None:
            heldout, note = self._heldout_set(runner, dataset)
        if note is not None and is_main_process():
            runner.logger.info(f'RewardHackingMonitorHook: reward_gap is skipped: {note}')
        self._sets = dict(train=train, heldout=heldout,
                          heldout_scorer=self.heldout_reward)
        return self._sets

    def _heldout_set(self, runner: Any, dataset: Any) -> tuple[tuple | None, str | None]:
        spec = self.heldout_prompts
        if spec is None:
            return None, 'no held-out prompts and no heldout_reward configured'
        if spec == 'auto':
            cfg = dict(runner.cfg.get('train_dataloader', {}).get('dataset', {}))
            if cfg.get('split') != 'train':
                return None, ("the training dataset has no split='train' to hold prompts out "
                              'of; set heldout_prompts or heldout_reward')
            spec = {**cfg, 'split': 'heldout'}
        if isinstance(spec, dict):
            found = distinct_prompts(DATASETS.build(spec))
        else:
            found = _with_metadata(list(spec), None)
        seen = set(distinct_prompts(dataset)[0])
        keep = [i for i, p in enumerate(found[0]) if p not in seen]
        if not keep:
            return None, 'every held-out prompt also occurs in the training dataset'
        found = ([found[0][i] for i in keep], [found[1][i] for i in keep])
        return _spread(found, self.num_prompts), None

    # ------------------------------------------------------------------------------ logging
    def _log(self, runner: Any, epoch: int, values: dict[str, float]) -> None:
        crossing = [name for name in values if name in MONITORS and self._fires(name, values)]
        self.streaks = {name: self.streaks.get(name, 0) + 1 for name in crossing}
        firing = [name for name in crossing  # a non-finite statistic is never noise
                  if self.streaks[name] >= self.patience or not math.isfinite(values[name])]
        values = {**values, 'crossing': float(len(crossing)), 'firing': float(len(firing))}
        self.history.append({'epoch': epoch, **values})
        if not is_main_process():
            return
        runner.visualizer.add_scalars({f'monitor/{k}': v for k, v in values.items()},
                                      step=epoch)
        shown = ', '.join(f'{k} {v:.4g}' for k, v in values.items())
        runner.logger.info(f'reward-hacking monitors at epoch {epoch}: {shown}')
        for name in firing:
            key, kind, meaning = MONITORS[name]
            bound = {'max': f'> {self.thresholds[key]:g}', 'min': f'< {self.thresholds[key]:g}',
                     'abs': f'|.| > {self.thresholds[key]:g}',
                     'ratio': f'outside [{1 / self.thresholds[key]:.3g}, '
                              f'{self.thresholds[key]:g}]'}[kind]
            row = (f', {self.streaks[name]} probes in a row' if self.patience > 1 else '')
            runner.logger.warning(
                f'reward-hacking monitor {name} = {values[name]:.4g} at epoch {epoch}, '
                f'threshold {bound} (thresholds.{key}){row}: {meaning}')

    def _fires(self, name: str, values: dict[str, float]) -> bool:
        key, kind, _ = MONITORS[name]
        threshold, value = self.thresholds[key], values[name]
        if threshold is None:
            return False
        if not math.isfinite(value):
            return True  # a non-finite statistic is never healthy
        return {'max': value > threshold, 'min': value < threshold,
                'abs': abs(value) > threshold,
                'ratio': not 1 / threshold <= value <= threshold}[kind]


def monitor_values(probe: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """The monitors of ``probe`` against ``reference`` (both :meth:`~RewardHackingMonitorHook.
    probe` outputs), and the raw statistics they come from."""
    x, ref = probe['x0'], reference['x0']
    div = torch.stack([mean_pairwise_distance(x[p]) for p in range(len(x))])
    div_ref = torch.stack([mean_pairwise_distance(ref[p]) for p in range(len(ref))]).clamp_min(
        1e-12)
    drift = torch.stack([energy_distance(x[p], ref[p]) for p in range(len(x))]) / div_ref
    values = dict(drift=drift.mean(), diversity=div.mean(), diversity_ratio=(div / div_ref).mean(),
                  x0_rms=probe['x0_rms'].mean(),
                  x0_norm_ratio=probe['x0_rms'].mean() / reference['x0_rms'].mean())
    if 'saturation' in probe:
        for name in ('saturation', 'brightness'):
            values[name] = probe[name].mean()
            values[f'{name}_shift'] = probe[name].mean() - reference[name].mean()
    if 'edges' in probe and 'edges' in reference:
        values['edge_energy'] = probe['edges'].mean()
        values['edge_energy_ratio'] = probe['edges'].mean() / reference['edges'].mean().clamp_min(
            1e-12)
    if 'colour_hist' in probe and 'colour_hist' in reference:
        hist, ref_hist = probe['colour_hist'], reference['colour_hist']
        values['colour_shift'] = total_variation(hist, ref_hist).mean()
        palette = ref_hist.mean(0)  # the colours the reference draws over the probe prompts
        values['rare_colour'] = rare_colour_mass(hist, palette).mean()
        values['rare_colour_shift'] = values['rare_colour'] - rare_colour_mass(ref_hist,
                                                                               palette).mean()
    if probe.get('reward') is not None:
        values['reward_train'] = probe['reward'].mean()
    if probe.get('heldout') is not None and probe.get('reward') is not None:
        values['reward_heldout'] = probe['heldout'].mean()
        values['reward_gap'] = (_standardised_gain(probe['reward'], reference['reward'])
                                - _standardised_gain(probe['heldout'], reference['heldout']))
    return {k: float(v) for k, v in values.items()}


def check_thresholds(thresholds: dict | None) -> dict[str, float | None]:
    """The thresholds over their defaults, each checked (the key named in the error)."""
    unknown = set(thresholds or {}) - set(THRESHOLD_DEFAULTS)
    if unknown:
        raise ValueError(f'RewardHackingMonitorHook.thresholds got unknown keys '
                         f'{sorted(unknown)}; valid: {sorted(THRESHOLD_DEFAULTS)}')
    out = {**THRESHOLD_DEFAULTS, **(thresholds or {})}
    ranges = dict(drift=(0, math.inf), diversity=(0, 1), reward_gap=(0, math.inf),
                  x0_norm=(1, math.inf), saturation=(0, 1), brightness=(0, 1),
                  edge_energy=(1, math.inf), rare_colour=(0, 1))
    for key, value in out.items():
        low, high = ranges[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low < value <= high or not math.isfinite(value)):
            raise ValueError(f'RewardHackingMonitorHook.thresholds.{key} must be a number in '
                             f'({low}, {high}] or None (off), got {value!r}')
    return out


def _standardised_gain(reward: Tensor, reference: Tensor) -> Tensor:
    """The mean reward's rise over the reference's, in the reference's standard deviations."""
    return (reward.mean() - reference.mean()) / reference.std().clamp_min(1e-6)


def _spread(found: tuple[list, list], n: int) -> tuple[list, list]:
    """``n`` of the prompts, evenly spaced (all of them when there are no more than ``n``):
    a dataset ordered by tag gives a probe of several tags, not of its first one only."""
    prompts, metadata = found
    if len(prompts) <= n:
        return list(prompts), list(metadata)
    picks = np.linspace(0, len(prompts) - 1, n).round().astype(int).tolist()
    return [prompts[i] for i in picks], [metadata[i] for i in picks]


def _with_metadata(prompts: list[Any], dataset: Any) -> tuple[list, list]:
    """Configured prompts, with the training dataset's metadata where it has the prompt."""
    known = dict(zip(*distinct_prompts(dataset), strict=True)) if dataset is not None else {}
    return list(prompts), [known.get(p) for p in prompts]
