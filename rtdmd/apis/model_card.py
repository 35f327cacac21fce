"""What an exported student folder says about itself: ``README.md`` and ``pipeline.py``.

``pipeline.py`` is a diffusers custom pipeline (it imports diffusers only): a subclass of the
family's pipeline whose call fills in the student's arguments (4 steps, the explicit
already-shifted sigmas, ``guidance_scale=1``, the training resolution) and keeps a stock
``FlowMatchEulerDiscreteScheduler`` from shifting those sigmas again. diffusers loads it as the
folder's pipeline class (``model_index.json`` names ``["pipeline", "RTDMDStudentPipeline"]``) or
through ``custom_pipeline=<folder>`` on the base model, so a plain ``pipe(prompt)`` samples as
the student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ['CUSTOM_PIPELINE', 'PIPELINE_FILE', 'StudentCard', 'licence_of', 'model_card',
           'pipeline_source']

PIPELINE_FILE = 'pipeline.py'
CUSTOM_PIPELINE = ('pipeline', 'RTDMDStudentPipeline')

#: Licences of the base models the configs name (their Hub cards' ``license`` fields).
_LICENCES = {
    'stabilityai/stable-diffusion-3-medium-diffusers': 'other (stabilityai-ai-community)',
    'stabilityai/stable-diffusion-3.5-medium': 'other (stabilityai-ai-community)',
    'black-forest-labs/FLUX.1-dev': 'other (flux-1-dev-non-commercial-license)',
    'black-forest-labs/FLUX.2-klein-4B': 'apache-2.0',
    'black-forest-labs/FLUX.2-klein-base-4B': 'apache-2.0',
    'black-forest-labs/FLUX.2-klein-9B': 'other (flux-non-commercial-license)',
    'black-forest-labs/FLUX.2-klein-base-9B': 'other (flux-non-commercial-license)',
}

_PIPELINE_TEMPLATE = '''"""An rtdmd few-step student's call arguments (diffusers only).

Written by rtdmd's export. Loaded as the pipeline class of a standalone export
(`DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)`) or on the base
model (`DiffusionPipeline.from_pretrained(<base>, custom_pipeline=<this folder>,
trust_remote_code=True)`); `pipe(prompt=...)` then samples as the student: every argument of
STUDENT_CALL that the caller does not pass is filled in.
"""

from diffusers import FlowMatchEulerDiscreteScheduler, {pipeline_class}

STUDENT_CALL = {call}

# The sigmas above are already shifted: a scheduler that shifts them again samples another
# schedule, so a shifting FlowMatchEulerDiscreteScheduler is replaced by an unshifted copy.
UNSHIFTED = dict(shift=1.0, use_dynamic_shifting=False, shift_terminal=None,
                 use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)


class RTDMDStudentPipeline({pipeline_class}):
    """{pipeline_class} with the student's defaults (see STUDENT_CALL)."""

    def __call__(self, *args, **kwargs):
        for key, value in STUDENT_CALL.items():
            kwargs.setdefault(key, value)
        scheduler = self.scheduler
        if type(scheduler) is FlowMatchEulerDiscreteScheduler and any(
                scheduler.config.get(k) != v for k, v in UNSHIFTED.items()):
            self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config,
                                                                         **UNSHIFTED)
        return super().__call__(*args, **kwargs)
'''


def pipeline_source(pipeline_class: str, call_kwargs: dict[str, Any]) -> str:
    """The ``pipeline.py`` of an export (``call_kwargs`` must be JSON-like literals)."""
    return _PIPELINE_TEMPLATE.format(pipeline_class=pipeline_class, call=repr(call_kwargs))


def licence_of(repo_id: str) -> str:
    return _LICENCES.get(repo_id, f'see the model card of {repo_id}')


@dataclass
class StudentCard:
    """Everything the model card states.

    Attributes:
        form: ``'lora'`` or ``'merged'``.
        standalone: the folder holds every component (``--copy-unchanged``).
        base_repo: the Hub repository the student's weights sit on (the generator's base).
        teacher_repo: the teacher's repository (may equal ``base_repo``).
        pipeline_class, transformer_class: diffusers class names of the family.
        method: e.g. ``'RTDMD (stage 2 of 2, on AC-DMD)'``.
        step_list, sigmas, eta, resolution: the student's sampler.
        call_kwargs: the call arguments of ``pipeline.py``.
        scheduler: ``'euler'`` (stock, deterministic) or ``'cps'`` (rtdmd's CPSScheduler).
        benchmark: a Markdown table of benchmark results, if one was given.
    """

    form: str
    standalone: bool
    base_repo: str
    teacher_repo: str
    pipeline_class: str
    transformer_class: str
    method: str
    step_list: list[int]
    sigmas: list[float]
    eta: float
    resolution: int | None
    call_kwargs: dict[str, Any]
    scheduler: str
    benchmark: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def model_card(card: StudentCard) -> str:
    """The ``README.md`` of an export (Hub model-card front matter, then the card)."""
    licence = licence_of(card.base_repo)
    front = ['---', f'base_model: {card.base_repo}',
             f'license: {licence.split(" ")[0]}', 'library_name: diffusers',
             'pipeline_tag: text-to-image', 'tags:', '- rtdmd', '- few-step',
             '- distillation', '---', '']
    sigmas = ', '.join(f'{s:.6g}' for s in card.sigmas)
    lines = [
        f'# {len(card.sigmas)}-step rtdmd student of {card.base_repo}', '',
        f'- **Base model**: [{card.base_repo}](https://huggingface.co/{card.base_repo}) '
        f'(licence: {licence}; the student inherits it). Teacher: {card.teacher_repo}.',
        f'- **Method**: {card.method}, distilled with rtdmd.',
        f'- **Form**: {_form_line(card)}',
        f'- **Sampler**: {len(card.sigmas)} steps, timesteps {card.step_list}, '
        f'sigmas [{sigmas}] (already shifted; append 0 for the end), CPS eta {card.eta:g}, '
        f'guidance scale 1 (no classifier-free guidance).',
        f'- **Resolution**: {card.resolution} x {card.resolution} px (the sigmas were computed '
        f'for it).' if card.resolution else '- **Resolution**: the base model\'s default.',
        '', '## How to load', '', *_load_section(card), '', *_scheduler_section(card)]
    if card.benchmark:
        lines += ['', '## Benchmark', '', card.benchmark.strip()]
    return '\n'.join(front + lines) + '\n'


def _form_line(card: StudentCard) -> str:
    if card.form == 'lora':
        return ('the student\'s LoRA in diffusers format (`pytorch_lora_weights.safetensors`), '
                f'for `load_lora_weights` on {card.base_repo}.')
    if card.standalone:
        return 'a complete pipeline with the LoRA merged into the transformer.'
    return ('the merged transformer and its scheduler only; the other components are the base '
            'model\'s, unchanged.')


def _load_section(card: StudentCard) -> list[str]:
    call = ', '.join(f'{k}={v!r}' for k, v in card.call_kwargs.items())
    if card.form == 'merged' and card.standalone:
        body = ['from diffusers import DiffusionPipeline', '',
                "pipe = DiffusionPipeline.from_pretrained('STUDENT_FOLDER', "
                "trust_remote_code=True)"]
    elif card.form == 'merged':
        body = [f'from diffusers import DiffusionPipeline, {card.transformer_class}', '',
                f"transformer = {card.transformer_class}.from_pretrained('STUDENT_FOLDER', "
                "subfolder='transformer')",
                f"pipe = DiffusionPipeline.from_pretrained('{card.base_repo}', "
                "custom_pipeline='STUDENT_FOLDER', transformer=transformer,",
                "                                         trust_remote_code=True)"]
    else:
        body = ['from diffusers import DiffusionPipeline', '',
                f"pipe = DiffusionPipeline.from_pretrained('{card.base_repo}', "
                "custom_pipeline='STUDENT_FOLDER',",
                "                                         trust_remote_code=True)",
                "pipe.load_lora_weights('STUDENT_FOLDER')"]
    return ['`STUDENT_FOLDER` is this folder (a local path or its Hub id). Its `pipeline.py`',
            '(diffusers code only, hence `trust_remote_code=True`: read it first) gives',
            '`pipe(prompt)` the student\'s defaults, so no argument is needed:', '',
            '```python', *body, "image = pipe(prompt='a photo of a red car').images[0]", '```', '',
            f'With the stock `{card.pipeline_class}` class instead, pass the arguments '
            'yourself (and keep a `FlowMatchEulerDiscreteScheduler` from re-shifting the '
            'sigmas: `shift=1.0, use_dynamic_shifting=False`):', '',
            '```python', f"pipe(prompt='a photo of a red car', {call})", '```']


def _scheduler_section(card: StudentCard) -> list[str]:
    if card.scheduler == 'cps':
        return ['## Scheduler', '',
                f'The folder\'s scheduler is rtdmd\'s `CPSScheduler` (eta {card.eta:g}), the '
                'student\'s exact stochastic sampler: `import rtdmd` before loading it.']
    stochastic = card.eta > 0 and len(card.sigmas) > 1
    lines = ['## Scheduler', '',
             'The scheduler is diffusers\' stock `FlowMatchEulerDiscreteScheduler` on the '
             'explicit sigmas above: the deterministic sampler (CPS with eta 0), which needs '
             'nothing but diffusers.']
    if stochastic:
        lines += ['', f'The student was trained and evaluated with the stochastic CPS sampler '
                  f'(eta {card.eta:g} on every step but the last). That sampler needs rtdmd:', '',
                  '```python', 'from rtdmd.models.samplers.cps_scheduler import CPSScheduler',
                  '', f'pipe.scheduler = CPSScheduler(sigmas={card.sigmas!r}, '
                  f'eta={card.eta:g})', '```']
    return lines
