"""How well the OCR reward reads the OCR benchmark's own texts when they are rendered cleanly.

    python tools/ocr_check.py [--num 60] [--size 512] [--font-size 40] [--reward-cfg JSON]

Renders the quoted target of the first ``--num`` prompts of the shipped OCR benchmark in black
DejaVu Sans on white (matplotlib ships the font), scores them with ``OCRReward`` and prints the
mean reward, the share read exactly, the worst readings and the seconds per image. A perfect
engine scores 1.0 everywhere; use it to check an OCR model (e.g. the English PP-OCR models given
through ``--reward-cfg '{"rec_model_path": ...}'``) before trusting it as a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
import textwrap
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout


def render(text: str, size: int, font_size: int):
    """``text`` wrapped to the image width, black on white: ``(3, size, size)`` in [0, 1]."""
    import matplotlib
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(osp.join(matplotlib.get_data_path(), 'fonts', 'ttf',
                                       'DejaVuSans.ttf'), font_size)
    image = Image.new('RGB', (size, size), 'white')
    draw = ImageDraw.Draw(image)
    width = max(1, int(size / (0.6 * font_size)))
    for k, line in enumerate(textwrap.wrap(text, width) or [text]):
        draw.text((font_size // 2, font_size // 2 + k * int(1.4 * font_size)), line,
                  fill='black', font=font)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num', type=int, default=60, help='first N prompts of the OCR set')
    parser.add_argument('--size', type=int, default=512, help='image side in pixels')
    parser.add_argument('--font-size', type=int, default=40)
    parser.add_argument('--reward-cfg', default='{}', help='OCRReward arguments as JSON')
    args = parser.parse_args(argv)

    import torch

    from rtdmd.datasets.text_prompts import load_benchmark, ocr_target
    from rtdmd.rewards.ocr import OCRReward

    items = load_benchmark('ocr', args.num)
    prompts = [item['prompt'] for item in items]
    images = torch.stack([render(ocr_target(p), args.size, args.font_size) for p in prompts])
    scorer = OCRReward(**json.loads(args.reward_cfg))
    start = time.perf_counter()
    scores = scorer(images, prompts)
    seconds = (time.perf_counter() - start) / len(prompts)
    print(f'{len(prompts)} OCR-benchmark targets rendered at {args.size} px')
    print(f'mean reward        {float(scores.mean()):.4f}')
    print(f'read exactly       {float((scores == 1).float().mean()):.3f}')
    print(f'seconds per image  {seconds:.3f}')
    worst = sorted(range(len(prompts)), key=lambda i: float(scores[i]))[:5]
    for i in worst:
        if float(scores[i]) < 1:
            read = scorer.recognize(images[i:i + 1])[0]
            print(f'  {float(scores[i]):.3f}  target {ocr_target(prompts[i])!r}  read {read!r}')


if __name__ == '__main__':
    main()
