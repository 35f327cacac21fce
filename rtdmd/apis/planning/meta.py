"""Real-size modules without weights: weightless snapshots, meta-device loading, FakeTensors.

The shipped architecture folders (``rtdmd/models/backbones/architectures/<repo folder>`` and
``rtdmd/rewards/architectures/<folder>``) hold each component's ``config.json`` in the layout of
the real Hugging Face snapshot, and nothing else. To build a backbone from one with the
backbone's own constructor (its LoRA targets, gradient checkpointing, teacher view, stage-2
adapter stacking), the planner

1. copies the configs into a temporary *weightless snapshot* (:func:`weightless_snapshot`): an
   empty placeholder next to every model config, so the constructor's pre-flight check passes,
   and an offline tokenizer of the class ``model_index.json`` names, so prompt encoding yields
   tensors of the real shapes. When the real snapshot is on disk where the config points, its
   own configs (and tokenizers) are used instead (:func:`architecture_source`);
2. builds under :func:`meta_loading`, where ``from_pretrained`` of every diffusers and
   transformers model builds the architecture of the folder's config on the meta device (the
   placeholder is never read) in the dtype the caller asked for;
3. swaps every meta tensor for a FakeTensor of the same shape, dtype and strides
   (:func:`to_fake`): the modules then run real forwards and backwards that allocate nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from rtdmd.utils.sharding import no_split_units

#: Name of the placeholder weight file of a weightless snapshot (empty, never read).
PLACEHOLDER = 'meta_placeholder.safetensors'
WEIGHT_PATTERNS = ('*.safetensors', '*.bin', '*.pt', '*.pth', '*.ckpt', '*.gguf', '*.onnx')
BACKBONE_ARCHITECTURES = 'rtdmd.models.backbones'
REWARD_ARCHITECTURES = 'rtdmd.rewards'


def architectures_root(package: str = BACKBONE_ARCHITECTURES) -> Path:
    """The ``architectures`` folder shipped inside ``package``."""
    return Path(str(resources.files(package))) / 'architectures'


def architecture_dir(name: str, package: str = BACKBONE_ARCHITECTURES) -> Path:
    """The shipped architecture folder ``name`` (a repository folder name, e.g. ``FLUX.1-dev``).

    Raises:
        FileNotFoundError: naming the folders that are shipped and how to add one.
    """
    root = architectures_root(package)
    path = root / name
    if not path.is_dir():
        shipped = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f'no architecture {name!r} in {root} (shipped: {shipped}). The planner looks a '
            f"backbone's `pretrained` / `generator_init` folder name up there: add "
            f'{root}/{name}/<component>/config.json (the config files of the real snapshot, '
            f'no weights), or point the config at a shipped one')
    return path


def architecture_source(path: str, weights_root: str | None = None) -> Path:
    """The folder whose configs describe the snapshot ``path`` names in a backbone config.

    The snapshot itself when it is on disk (``weights_root/path``, or ``path`` if absolute):
    its configs are the truth; otherwise the shipped architecture of the same folder name.
    """
    from rtdmd.models.backbones.pretrained import resolve_weights_path

    local = Path(resolve_weights_path(weights_root, path))
    if (local / 'model_index.json').is_file():
        return local
    return architecture_dir(local.name)


def weightless_snapshot(source: str | Path, root: str | Path) -> str:
    """Copy the configs of snapshot ``source`` under ``root`` and complete them for a loader.

    Weight files are not copied. Every component folder with a ``config.json`` gets an empty
    :data:`PLACEHOLDER` weight file, and every tokenizer ``model_index.json`` names that has
    no files gets an offline tokenizer of its class. Returns the copy's path.
    """
    from rtdmd.testing.tokenizers import OFFLINE_TOKENIZERS

    source = Path(source)
    dst = Path(tempfile.mkdtemp(dir=root)) / source.name
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns(*WEIGHT_PATTERNS))
    index = json.loads((dst / 'model_index.json').read_text())
    for component, spec in index.items():
        if component.startswith('_') or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = dst / component
        if (folder / 'config.json').is_file():
            (folder / PLACEHOLDER).touch()
        elif folder.is_dir() and any(folder.iterdir()):
            continue  # the snapshot's own tokenizer
        elif spec[1] in OFFLINE_TOKENIZERS:
            OFFLINE_TOKENIZERS[spec[1]]().save_pretrained(str(folder))
        else:
            raise FileNotFoundError(f'{source}/model_index.json names {component} ({spec[1]}), '
                                    f'which has neither a config.json nor an offline tokenizer')
    return str(dst)


def _resolve_dtype(dtype: Any, config_dtype: Any) -> torch.dtype:
    """transformers' rule: no dtype (or ``'auto'``) means the config's ``dtype``, else float32."""
    if dtype is None or dtype == 'auto':
        dtype = config_dtype or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _diffusers_on_meta(cls: type, path: str, subfolder: str | None = None,
                       **kwargs: Any) -> nn.Module:
    """``ModelMixin.from_pretrained`` on the meta device: the config's architecture, no weights."""
    dtype = kwargs.get('torch_dtype') or kwargs.get('dtype')
    config = cls.load_config(path, subfolder=subfolder)
    with torch.device('meta'):
        model = cls.from_config(config)
    if dtype is not None:
        nn.Module.to(model, dtype)  # every floating tensor, as loading a checkpoint in dtype does
    return model.eval()


def _transformers_on_meta(cls: type, path: str, *args: Any, subfolder: str = '',
                          **kwargs: Any) -> nn.Module:
    """``PreTrainedModel.from_pretrained`` on the meta device, with transformers' dtype rule."""
    config = cls.config_class.from_pretrained(path, subfolder=subfolder)
    dtype = _resolve_dtype(kwargs.get('dtype', kwargs.get('torch_dtype')),
                           getattr(config, 'dtype', None))
    with torch.device('meta'):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


@contextlib.contextmanager
def meta_loading() -> Iterator[None]:
    """Inside: models load as architectures on the meta device (see module docstring).

    Everything created inside defaults to the meta device too, so adapters that peft adds to a
    loaded model are meta tensors as well.
    """
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    saved = {cls: cls.__dict__['from_pretrained'] for cls in (ModelMixin, PreTrainedModel)}
    ModelMixin.from_pretrained = classmethod(_diffusers_on_meta)
    PreTrainedModel.from_pretrained = classmethod(_transformers_on_meta)
    try:
        with torch.device('meta'):
            yield
    finally:
        for cls, method in saved.items():
            cls.from_pretrained = method


def to_fake(module: nn.Module, mode: FakeTensorMode, device: str = 'cpu') -> nn.Module:
    """Replace every parameter and buffer of ``module`` by a FakeTensor of ``mode``.

    Shapes, dtypes and strides are kept; tensors shared between modules (tied embeddings) stay
    shared, so their bytes count once. The fake device is the CPU: its attention kernel has the
    flash-attention memory contract of the GPU (no score matrix), and fake CUDA tensors fail in
    backward without a GPU.
    """
    memo: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            memo[id(t)] = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device)
        return memo[id(t)]

    with mode:
        module._apply(fake)
    return module


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages among ``tensors`` (an iterable of tensors)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


def module_bytes(*modules: nn.Module, trainable: bool | None = None) -> int:
    """Parameter and buffer bytes of ``modules`` (shared storages once).

    Args:
        trainable: ``True`` counts only parameters that require grad, ``False`` only the rest
            (with buffers), ``None`` everything.
    """
    tensors = []
    for module in modules:
        for p in module.parameters():
            if trainable is None or p.requires_grad == trainable:
                tensors.append(p)
        if trainable is not True:
            tensors.extend(module.buffers())
    return tensor_bytes(tensors)


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one at a time: those whose class the model lists as not to be
    split (``_no_split_modules``: the transformer / encoder block classes)."""
    return no_split_units(module)


__all__ = ['PLACEHOLDER', 'architecture_dir', 'architecture_source', 'architectures_root',
           'fsdp_units', 'meta_loading', 'module_bytes', 'tensor_bytes', 'to_fake',
           'weightless_snapshot']
