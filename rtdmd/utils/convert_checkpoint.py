"""Convert a trusted mmengine-style checkpoint into rtdmd's safe format (with its record).

    python -m rtdmd.utils.convert_checkpoint SRC.pth DST.pth

rtdmd loads checkpoints with ``weights_only=True`` only. A checkpoint written by mmengine's own
``CheckpointHook`` (or by an rtdmd older than the safe format) pickles ``HistoryBuffer`` and
NumPy objects and is refused. If, and only if, you trust where ``SRC`` came from, this unpickles
it once (``weights_only=False``: it can run code hidden in the file) and writes ``DST`` holding
tensors and plain values only, with a checksum record. Before that it lists the globals the file's
pickle imports and refuses any beyond those mmengine's checkpoints use (NumPy's arrays, scalars
and dtypes, ``HistoryBuffer`` and the ``getattr`` its pickle calls): a file that imports ``os``,
``subprocess`` or ``open`` was not written by mmengine. That narrows what a crafted file can do;
it does not make it safe (``getattr`` still reaches far), so the trust stays yours. The record
carries no run identity, so a converted checkpoint resumes any config: check that it is the
right one.
"""

from __future__ import annotations

import argparse
import io
import os.path as osp

import torch

from .atomic import atomic_write_bytes, atomic_write_json
from .checkpoint_io import RECORD_FORMAT, encode_checkpoint, file_sha256, record_path

__all__ = ['convert_trusted_checkpoint']

# The globals beyond torch's safe set that mmengine's CheckpointHook files import (NumPy 1 and 2).
MMENGINE_GLOBALS = frozenset({
    'builtins.getattr', 'collections.OrderedDict', 'mmengine.logging.history_buffer.HistoryBuffer',
    'numpy.dtype', 'numpy.ndarray', 'numpy.core.multiarray._reconstruct',
    'numpy.core.multiarray.scalar', 'numpy._core.multiarray._reconstruct',
    'numpy._core.multiarray.scalar'})


def _foreign_globals(src: str) -> list[str]:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(src)
    return [n for n in names if n not in MMENGINE_GLOBALS and not n.startswith('numpy.dtypes.')]


def convert_trusted_checkpoint(src: str, dst: str) -> str:
    """Write ``src`` (trusted, unpickled with code) to ``dst`` in the safe format; returns dst.

    Raises:
        ValueError: ``src`` imports globals that no mmengine checkpoint does; nothing is run.
    """
    foreign = _foreign_globals(src)
    if foreign:
        raise ValueError(f'{src} was not converted: its pickle imports {", ".join(foreign)}, '
                         f'which no mmengine checkpoint does. Nothing in it was run; do not load '
                         f'it unless you know what these are for.')
    checkpoint = torch.load(src, map_location='cpu', weights_only=False)  # the user trusts it
    buffer = io.BytesIO()
    torch.save(encode_checkpoint(checkpoint), buffer)
    atomic_write_bytes(dst, buffer.getvalue())
    meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
    atomic_write_json(record_path(dst), dict(format=RECORD_FORMAT, sha256=file_sha256(dst),
                                             size=osp.getsize(dst), iter=meta.get('iter'),
                                             identity={}))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='the trusted checkpoint')
    parser.add_argument('dst', help='where the safe copy goes')
    args = parser.parse_args(argv)
    print(f'wrote {convert_trusted_checkpoint(args.src, args.dst)}')


if __name__ == '__main__':
    main()
