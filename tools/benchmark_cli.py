"""How long ``--help`` takes for every tool (target: under 1 s), and what it imports.

    python tools/benchmark_cli.py [--repeats 3]

Each tool runs ``--help`` in a fresh interpreter ``repeats`` times; the best wall time is
printed with whether torch got imported (a tool that parses its arguments before its heavy
imports never loads torch for ``--help``). Figures, not a pass/fail test: wall time depends on
the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PROBE = ('import runpy, sys; sys.argv = [{path!r}, "--help"]\n'
         'try:\n    runpy.run_path({path!r}, run_name="__main__")\n'
         'except SystemExit:\n    pass\n'
         'sys.stderr.write("TORCH=%d\\n" % ("torch" in sys.modules))')


def measure(path: str, repeats: int) -> tuple[float, bool, int]:
    """Best wall time of ``path --help`` over ``repeats`` runs, torch imported, exit code.

    A fresh interpreter's wall time (start-up and imports included) is the figure, so each run
    is a subprocess timed by ``perf_counter``; ``torch.utils.benchmark.Timer`` times statements
    inside this process and would only wrap ``subprocess.run`` (adding its warm-up runs).
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    best, torch_loaded, code = float('inf'), False, 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, '-c', PROBE.format(path=path)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        best = min(best, time.perf_counter() - start)
        torch_loaded = 'TORCH=1' in result.stderr
        code = result.returncode
    return best, torch_loaded, code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Time --help of every tool.')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    tools = sorted(glob.glob(osp.join(ROOT, 'tools', '*.py')))
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'pass'], check=True)
    print(f'bare interpreter start: {time.perf_counter() - start:.2f} s')
    print(f'{"tool":<22} {"--help (s)":>10}  torch imported')
    for path in tools:
        seconds, torch_loaded, code = measure(path, args.repeats)
        flag = 'yes' if torch_loaded else 'no'
        note = '' if code == 0 else f'  (exit code {code})'
        print(f'{osp.basename(path):<22} {seconds:>10.2f}  {flag}{note}')


if __name__ == '__main__':
    main()
