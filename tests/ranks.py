"""Starting the gloo ranks of a test: forked from the test process where that is safe."""

from __future__ import annotations

import socket
from collections.abc import Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_ranks(fn: Callable, args: tuple, nprocs: int = 2) -> None:
    """``fn(rank, *args)`` in ``nprocs`` processes, joined; a rank's error is raised here.

    Forked, the ranks inherit this process's imports (torch, mmengine, diffusers, peft: tens of
    seconds per process when spawned on a loaded machine). Fork is unsafe once CUDA has started
    in this process, so the ranks are spawned then (and where fork does not exist).
    """
    fork = 'fork' in mp.get_all_start_methods() and not torch.cuda.is_initialized()
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True,
                       start_method='fork' if fork else 'spawn')
