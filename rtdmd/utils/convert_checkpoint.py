"""Convert a trusted mmengine-style checkpoint into rtdmd's safe format (with its record).

    python -m rtdmd.utils.convert_checkpoint SRC.pth DST.pth

rtdmd loads checkpoints with ``weights_only=True`` only. A checkpoint written by mmengine's own
``CheckpointHook`` (or by an rtdmd older than the safe format) pickles ``HistoryBuffer`` and
NumPy objects and is refused. If, and only if, you trust where ``SRC`` came from, this unpickles
it once (``weights_only=False``: it can run code hidden in the file) and writes ``DST`` holding
tensors and plain values only, with a checksum record. The record carries no run identity, so a
converted checkpoint resumes any config: check that it is the right one.
"""

from __future__ import annotations

import argparse
import io
import os.path as osp

import torch

from .atomic import atomic_write_bytes, atomic_write_json
from .checkpoint_io import RECORD_FORMAT, encode_checkpoint, file_sha256, record_path

__all__ = ['convert_trusted_checkpoint']


def convert_trusted_checkpoint(src: str, dst: str) -> str:
    """Write ``src`` (trusted, unpickled with code) to ``dst`` in the safe format; returns dst."""
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
