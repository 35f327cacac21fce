"""Peak memory of a computation on FakeTensors, with torch's memory tracker.

:func:`measure` runs a function under ``torch.distributed._tools.mem_tracker.MemTracker``, which
follows every storage an op creates and frees (weak references, rounded to the CUDA caching
allocator's 512-byte blocks) and records the peak, split into parameters, buffers, gradients
and the rest. On FakeTensors nothing is allocated, so a 12-billion-parameter model runs on a
laptop. Two things make the CPU-fake run count what the GPU allocates:

- attention: fake CPU tensors take the CPU flash-attention kernel, which keeps the output and
  the log-sum-exp only (no score matrix), as CUDA's flash / memory-efficient kernels do;
- RMSNorm: on CUDA ``F.rms_norm`` is one fused kernel (``aten._fused_rms_norm``) that saves its
  input and an fp32 ``rstd`` for backward; on the CPU it is decomposed into ops that save fp32
  copies of the input. :func:`cuda_rms_norm` gives the fused kernel's autograd contract
  (checked against an H200: FLUX.2-klein 4B frozen-weight forward + backward at batch 8 is
  37.2 GiB planned against 37.0 measured, 43.5 with the CPU decomposition).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.distributed._tools.mod_tracker import ModTracker

_PARAM, _BUFFER, _GRAD, _TOTAL = 'Parameter', 'Buffer', 'Gradient', 'Total'


class _NoHook:
    """Stands for the gradient hooks torch's tracker puts on a parameter (see below)."""

    def remove(self) -> None:
        return None


class _ForwardHooks(ModTracker):
    """``ModTracker`` that calls the tracker's forward hooks and nothing else.

    ``ModTracker`` also puts autograd hooks on every module's inputs and outputs to follow the
    backward pass module by module; the planner needs only ``is_bw`` (read from autograd's
    current graph task). Those hooks also fail on a view made under ``no_grad`` of a tensor
    that requires grad (a float32 model's input to a no-grad teacher call).
    """

    def _fw_pre_hook(self, mod: nn.Module, input: Any) -> None:
        if self._user_pre_fw_hook is not None:
            self._user_pre_fw_hook(mod, input)

    def _fw_post_hook(self, mod: nn.Module, input: Any, output: Any) -> None:
        return None


class PhaseTracker(MemTracker):
    """``MemTracker``'s storage accounting without its per-module statistics.

    The planner reads the global peak only (split into parameters, buffers, gradients and the
    rest). ``MemTracker`` also keeps, for every module, snapshots at each forward and backward
    hook and a per-module peak updated on every op by a loop over all modules seen so far: on
    a model with thousands of modules that is most of its cost, and it refuses a second
    forward of a root module (rollout steps, the two forwards of CFG, a role used twice) as
    "multiple iterations". Here the hooks only do what the accounting needs (a module's
    parameters and buffers are tracked when it first runs, with gradient hooks on the
    trainable ones: a frozen parameter refuses hooks) and each op updates the global peak.
    Storages are followed exactly as in ``MemTracker`` (weak references, 512-byte blocks);
    module hooks come from :class:`_ForwardHooks`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mod_tracker = _ForwardHooks()
        self._seen: set[int] = set()

    def _track_module_params_and_buffers(self, module: nn.Module,
                                         install_grad_hooks: bool = True) -> tuple[int, int]:
        if install_grad_hooks:
            for param in module.parameters():
                if not param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())
        return super()._track_module_params_and_buffers(module, install_grad_hooks)

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        if id(module) not in self._seen:
            self._seen.add(id(module))
            self._track_module_params_and_buffers(module, install_grad_hooks=True)

    def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        return None

    def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
        return None

    def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        res = func(*args, **(kwargs or {}))
        reftype = (_MemRefType.OPT if self._in_opt else
                   _MemRefType.TEMP if self._mod_tracker.is_bw else _MemRefType.ACT)
        outputs = res if isinstance(res, (tuple, list)) else (res,)
        for out in outputs:
            if isinstance(out, Tensor):
                self._track(reftype, out)
            elif isinstance(out, (tuple, list)):
                for t in out:
                    if isinstance(t, Tensor):
                        self._track(reftype, t)
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL]:
                self._peak_mem[dev] = snap[_TOTAL]
                self._peak_mem_snap[dev] = dict(snap)
        return res


class _FusedRMSNorm(torch.autograd.Function):
    """``F.rms_norm`` with the memory of CUDA's ``aten._fused_rms_norm``.

    The kernel allocates its output (the input's dtype) and an fp32 ``rstd`` per normalised
    row, and saves the input, ``rstd`` and the weight for backward, whose kernel allocates the
    input and weight gradients only. On FakeTensors exactly those are allocated (the CPU
    decomposition would allocate fp32 temporaries the kernel does not have). Real tensors
    never get here (:func:`_rms_norm`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, shape: list[int],
                eps: float | None) -> Tensor:
        rows = (*x.shape[:x.ndim - len(shape)], *(1,) * len(shape))
        out, rstd = torch.empty_like(x), x.new_empty(rows, dtype=torch.float32)
        ctx.save_for_backward(x, rstd, weight)
        ctx.shape = shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, rstd, weight = ctx.saved_tensors
        del rstd  # read by the kernel, allocates nothing
        return (torch.empty_like(x) if ctx.needs_input_grad[0] else None,
                torch.empty_like(weight) if weight is not None and ctx.needs_input_grad[1]
                else None, None, None)


_F_RMS_NORM = F.rms_norm


def _rms_norm(x: Tensor, normalized_shape: Any, weight: Tensor | None = None,
              eps: float | None = None) -> Tensor:
    if not isinstance(x, FakeTensor):
        return _F_RMS_NORM(x, normalized_shape, weight, eps)
    return _FusedRMSNorm.apply(x, weight, list(normalized_shape), eps)


@contextlib.contextmanager
def cuda_rms_norm() -> Iterator[None]:
    """Inside: ``F.rms_norm`` (``torch.nn.RMSNorm``) keeps what the CUDA kernel keeps.

    The function is swapped on ``torch.nn.functional`` (not as a torch-function mode) so the
    recomputation of checkpointed blocks during backward sees it too.
    """
    original = F.rms_norm
    F.rms_norm = _rms_norm
    try:
        yield
    finally:
        F.rms_norm = original


@dataclass
class Usage:
    """Bytes at the peak of one measured computation.

    Attributes:
        peak: everything live at the peak.
        resident: parameters and buffers among them (modules passed to :func:`measure` and
            modules the computation called).
        grads: parameter gradients among them.
    """

    peak: int
    resident: int
    grads: int

    @property
    def transient(self) -> int:
        """Activations, temporaries and tracked inputs: the peak less weights and gradients."""
        return self.peak - self.resident - self.grads


def measure(fn: Callable[[], Any], mode: Any, track: Iterable[nn.Module | Tensor] = (),
            cuda_kernels: bool = True) -> Usage:
    """Run ``fn`` in fake ``mode`` under :class:`PhaseTracker` and return its peak.

    Args:
        fn: the computation (its result is dropped before the peak is read).
        mode: the ``FakeTensorMode`` the modules' tensors belong to.
        track: modules (their parameters and buffers) and tensors made before ``fn`` that are
            live during it; tensors count in :attr:`Usage.transient`.
        cuda_kernels: give ``F.rms_norm`` the CUDA kernel's memory (:func:`cuda_rms_norm`).
    """
    tracker = PhaseTracker()
    track = list(track)
    if track:
        tracker.track_external(*track)
    with mode, tracker, (cuda_rms_norm() if cuda_kernels else contextlib.nullcontext()):
        fn()
    snap: dict[str, int] = {}
    for dev_snap in tracker.get_tracker_snapshot('peak').values():
        for key, value in dev_snap.items():
            snap[str(getattr(key, 'value', key))] = snap.get(
                str(getattr(key, 'value', key)), 0) + value
    return Usage(peak=snap.get(_TOTAL, 0), resident=snap.get(_PARAM, 0) + snap.get(_BUFFER, 0),
                 grads=snap.get(_GRAD, 0))


__all__ = ['PhaseTracker', 'Usage', 'cuda_rms_norm', 'measure']
