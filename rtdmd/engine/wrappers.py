"""Distributed wrapping of a distiller: one DDP per trainable role, the teacher untouched."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rtdmd.registry import MODEL_WRAPPERS


class DistillerWrapper(nn.Module):
    """The Runner's steps go to the distiller, which wraps its roles itself (DDP or FSDP2)."""

    def train_step(self, data: Any, optim_wrapper: Any) -> dict:
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data: Any) -> list:
        return self.module.val_step(data)

    def test_step(self, data: Any) -> list:
        return self.module.test_step(data)


@MODEL_WRAPPERS.register_module()
class DistillerDataParallel(DistillerWrapper):
    """Wraps ``generator`` and ``fake_score`` of the distiller's backbone in their own DDP.

    The wrappers live beside the module tree (``Backbone.net(role)`` returns them), so state
    dicts and checkpoints look the same with and without distribution. On a machine without
    GPUs DDP runs on gloo with ``device_ids=None``.

    Args:
        module: the distiller.
        find_unused_parameters: forwarded to DDP (needed when some LoRA weights may not be used).
        broadcast_buffers: forwarded to DDP.
    """

    def __init__(self, module: nn.Module, find_unused_parameters: bool = False,
                 broadcast_buffers: bool = False) -> None:
        super().__init__()
        self.module = module
        device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None

        def wrap(net: nn.Module) -> nn.Module:
            return DistributedDataParallel(net, device_ids=device_ids,
                                           find_unused_parameters=find_unused_parameters,
                                           broadcast_buffers=broadcast_buffers)

        module.backbone.wrap_roles(wrap)
