"""Real-size check of both stages on random weights: seconds and peak memory per phase.

    python tools/gpu_check.py [--model flux2_klein_4b|sd35m|all] [--resolution 512] [--batch 2]
        [--group-size 2] [--iters 1] [--device cuda] [--scale full|tiny] [--tmpdir DIR]
        [--out FILE.json]

Phases per model: ``write_snapshot`` (a random-weight diffusers pipeline directory, safetensors),
``load_stage1`` / ``stage1_iteration`` (``ACDMDDistiller`` of ``configs/ac_dmd/<model>_4step.py``
through the production backbone; one ``train_step`` with ``fake_update_ratio=1`` and
``FinalStepMatching``, no random stop: a fake-score and a generator update, all steps run),
``load_stage2`` /
``stage2_policy_step`` (``RTDMDDistiller`` of ``configs/rtdmd/...`` on the stage-1 LoRA with
``ImageBrightnessReward``; one RL epoch). bf16 weights, gradient checkpointing; peak memory is
CUDA ``max_memory_allocated``, reset before each phase. ``--scale full``: real-size transformers,
VAEs and text encoders (Qwen3-4B; CLIP-L, CLIP-G and T5-XXL), the encoders built from the shipped
architecture snapshots (``rtdmd/models/backbones/architectures``, the public config.json files)
with the offline test tokenizers (the ids they emit lie inside the real vocabularies); ``--scale
tiny``: narrow stand-ins, a CPU smoke test. The reward is ``ImageBrightnessReward``: the training
rewards' memory is the planner's (``tools/plan.py``). See docs/get_started.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os.path as osp
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout
# torch, diffusers and rtdmd are imported inside the functions, after the arguments are parsed:
# --help and argument errors come back in a fraction of a second.

# FLUX.2-klein 4B (black-forest-labs/FLUX.2-klein-base-4B / -4B), shared/ENVIRONMENT.md: 5 double
# + 20 single blocks, 24 heads x 128, joint_attention_dim 7680 = 3 stacked Qwen3-4B layers of 2560,
# no guidance embedding; 3.88 B params. The rest are Flux2Transformer2DModel's defaults (patch 1,
# in_channels 128, mlp_ratio 3, timestep_guidance_channels 256, RoPE axes 4 x 32, theta 2000).
FLUX2 = dict(full=dict(num_layers=5, num_single_layers=20, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=3 * 2560, guidance_embeds=False),
             tiny=dict(num_layers=1, num_single_layers=2, attention_head_dim=16,
                       num_attention_heads=2, joint_attention_dim=3 * 16, guidance_embeds=False,
                       timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4)))
# SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium transformer/config.json): 24 layers, 24
# heads x 64 = 1536 (= caption_projection_dim), dual attention in layers 0..12, qk_norm rms_norm,
# pos_embed_max_size 384; diffusers' single-file loader recognises it by 6 x 1536 = 9216 adaLN
# outputs and 147456 = 384^2 positions. joint_attention_dim 4096 (T5-XXL), pooled 2048 (CLIP-L 768
# + CLIP-G 1280), sample_size 128, patch 2 and 16 channels are SD3Transformer2DModel's defaults.
SD35M = dict(full=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                       num_layers=24, attention_head_dim=64, num_attention_heads=24,
                       joint_attention_dim=4096, caption_projection_dim=1536,
                       pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm='rms_norm',
                       dual_attention_layers=tuple(range(13))),
             tiny=dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                       attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                       caption_projection_dim=32, pooled_projection_dim=24, pos_embed_max_size=32,
                       qk_norm='rms_norm', dual_attention_layers=(0,)))
#: Output widths of the text stand-ins: Qwen3 hidden size; CLIP-L, CLIP-G and T5 hidden sizes.
TEXT = dict(flux2_klein_4b=dict(full=2560, tiny=16), sd35m=dict(full=(768, 1280, 4096),
                                                                tiny=(8, 16, 32)))
#: VAE channels: the real SD3 / FLUX.2 VAEs' (AutoencoderKLFlux2's defaults), or the fixtures'.
VAE = dict(full=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                     norm_num_groups=32),
           tiny=dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4))
#: Snapshot folder (the configs' ``pretrained``) and config name per model.
SPECS = {'flux2_klein_4b': ('FLUX.2-klein-base-4B', 'flux2_klein_4b_4step'),
         'sd35m': ('stable-diffusion-3.5-medium', 'sd35m_4step')}


def _transformer(cls: type, kwargs: dict, device: str) -> torch.nn.Module:
    import torch

    with torch.device(device):  # random init of billions of weights is fast on the GPU
        net = cls(**kwargs)
    return net.to(torch.bfloat16).cpu().eval()


def _snapshot_encoder(model: str, component: str, device: str) -> torch.nn.Module:
    """Real-size random-weight text encoder ``component`` from the shipped snapshot's config."""
    import torch
    import transformers

    from rtdmd.apis.planning.meta import architectures_root

    folder = architectures_root() / SPECS[model][0] / component
    config = transformers.AutoConfig.from_pretrained(str(folder))
    cls = getattr(transformers, config.architectures[0])
    with torch.device(device):
        net = cls(config)
    return net.to(torch.bfloat16).cpu().eval()


def build_pipeline(model: str, scale: str, device: str) -> Any:
    """The random-weight diffusers pipeline of ``model`` (see the module docstring)."""
    import diffusers as d
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, T5Config, T5EncoderModel

    from rtdmd.testing.flux2 import qwen_tokenizer
    from rtdmd.testing.sd3 import _clip_encoder, _clip_tokenizer, _t5_tokenizer

    torch.manual_seed(0)
    width = TEXT[model][scale]
    if model == 'flux2_klein_4b':
        tok = qwen_tokenizer()  # 27 layers: the config's hidden states (9, 18, 27) exist
        text = _snapshot_encoder(model, 'text_encoder', device) if scale == 'full' else \
            Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(tok), hidden_size=width, intermediate_size=64, num_hidden_layers=27,
            num_attention_heads=2, num_key_value_heads=1, head_dim=64 if scale == 'full' else 8,
            max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tok.pad_token_id))
        sched = d.FlowMatchEulerDiscreteScheduler(  # klein's dynamic exponential shift
            shift=3.0, use_dynamic_shifting=True, time_shift_type='exponential', base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        return d.Flux2KleinPipeline(
            scheduler=sched, vae=d.AutoencoderKLFlux2(**VAE[scale]), text_encoder=text.eval(),
            tokenizer=tok,
            transformer=_transformer(d.Flux2Transformer2DModel, FLUX2[scale], device))
    toks = [_clip_tokenizer(), _clip_tokenizer('!'), _t5_tokenizer()]
    t5 = T5EncoderModel(T5Config(vocab_size=len(toks[2]), d_model=width[2], d_kv=8, d_ff=64,
                                 num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    vae = d.AutoencoderKL(down_block_types=('DownEncoderBlock2D',) * 4, latent_channels=16,
                          up_block_types=('UpDecoderBlock2D',) * 4, scaling_factor=1.5305,
                          shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
                          **VAE[scale])
    if scale == 'full':
        encoders = [_snapshot_encoder(model, f'text_encoder{n}', device)
                    for n in ('', '_2', '_3')]
    else:
        encoders = [_clip_encoder(len(toks[0]), width[0], width[0]).eval(),
                    _clip_encoder(len(toks[1]), width[1], width[1]).eval(), t5.eval()]
    return d.StableDiffusion3Pipeline(
        transformer=_transformer(d.SD3Transformer2DModel, SD35M[scale], device),
        scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=toks[0], text_encoder_2=encoders[1],
        tokenizer_2=toks[1], text_encoder_3=encoders[2], tokenizer_3=toks[2])


def measure(rows: list[dict], model: str, phase: str, device: torch.device,
            fn: Callable[[], Any], iters: int = 1) -> Any:
    """Run ``fn`` ``iters`` times; record and print the first and warm seconds and the peak.

    Timed by hand rather than with ``torch.utils.benchmark.Timer``: the first call's time is a
    figure of its own (allocation, kernel selection), ``fn`` returns the losses reported, and a
    train step changes the model, so Timer's extra warm-up calls (at least two per ``timeit``)
    would train more steps than asked and hide the cold start.
    """
    import torch

    cuda = device.type == 'cuda'
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    losses = {k: float(v) for k, v in out.items()} if isinstance(out, dict) else {}
    row = dict(model=model, phase=phase, seconds=times[0], peak_gib=peak, losses=losses,
               warm_seconds=sum(times[1:]) / (iters - 1) if iters > 1 else None,
               finite=all(math.isfinite(v) for v in losses.values()))
    rows.append(row)
    warm = '-' if row['warm_seconds'] is None else f'{row["warm_seconds"]:.3f}'
    state = '-' if not losses else 'finite' if row['finite'] else 'NON-FINITE'
    print(f'{model:<16}{phase:<20}{times[0]:>10.3f}{warm:>10}{peak:>10.2f}  {state}', flush=True)
    return out


class PhaseRecorder:
    """Per named phase of an update (``DistillerBase.phase``): seconds, peak memory, FLOPs
    (``FlopCounterMode``, 1 multiply-add = 2 FLOPs) and model FLOP utilisation against
    ``peak_tflops``; one row per phase, summed over its micro-batches."""

    def __init__(self, model: str, stage: str, device: torch.device, peak_tflops: float
                 ) -> None:
        self.model, self.stage, self.device, self.peak = model, stage, device, peak_tflops
        self.totals: dict[str, dict] = {}
        self.depth = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        if self.depth:  # a phase inside a phase is counted by the outer one
            yield
            return
        cuda = self.device.type == 'cuda'
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        counter = FlopCounterMode(display=False)
        start = time.perf_counter()
        self.depth += 1
        try:
            with counter:
                yield
        finally:
            self.depth -= 1
            if cuda:
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            peak = (torch.cuda.max_memory_allocated(self.device) if cuda else
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
            row = self.totals.setdefault(name, dict(seconds=0.0, flops=0, peak_gib=0.0,
                                                    calls=0))
            row['seconds'] += seconds
            row['flops'] += counter.get_total_flops()
            row['peak_gib'] = max(row['peak_gib'], peak)
            row['calls'] += 1

    def rows(self) -> list[dict]:
        out = []
        for name, row in self.totals.items():
            tflops = row['flops'] / 1e12
            mfu = tflops / row['seconds'] / self.peak if row['seconds'] > 0 else 0.0
            out.append(dict(model=self.model, phase=f'{self.stage}/{name}',
                            seconds=row['seconds'], peak_gib=row['peak_gib'], tflop=tflops,
                            mfu=mfu, calls=row['calls']))
            print(f'{self.model:<16}{self.stage + "/" + name:<32}{row["seconds"]:>9.3f}'
                  f'{row["peak_gib"]:>9.2f}{tflops:>10.2f}{100 * mfu:>7.1f}%', flush=True)
        return out


def run_stage(model: str, stage: str, cfg: Any, prompts: list[str], args: argparse.Namespace,
              rows: list[dict], save: str | None) -> None:
    """Build the stage's distiller, time ``args.iters`` train steps, optionally save its LoRA."""
    import torch
    from mmengine.optim import build_optim_wrapper

    from rtdmd.registry import MODELS

    device = torch.device(args.device)

    def load() -> tuple[Any, Any]:
        distiller = MODELS.build(cfg.model).to(device)
        optim = build_optim_wrapper(distiller, cfg.optim_wrapper)
        distiller.init_weights()  # the stage-2 warm start, after the optimizers, as the Runner
        return distiller, optim

    distiller, optim = measure(rows, model, f'load_{stage}', device, load)
    data = {'prompt': prompts, 'index': list(range(len(prompts)))}
    distiller.train()
    measure(rows, model, 'stage1_iteration' if stage == 'stage1' else 'stage2_policy_step',
            device, lambda: distiller.train_step(data, optim), args.iters)
    # One more step, phase by phase (FLOP counting slows it: not part of the timings above).
    recorder = PhaseRecorder(model, stage, device, args.peak_tflops)
    distiller.phase_recorder = recorder
    distiller.train_step(data, optim)
    distiller.phase_recorder = None
    print(f'{"model":<16}{"phase":<32}{"seconds":>9}{"peak GiB":>9}{"TFLOP":>10}{"MFU":>8}')
    rows.extend(recorder.rows())
    if save:  # the state dict holds the LoRA weights only
        torch.save({'state_dict': {k: v.cpu() for k, v in distiller.state_dict().items()}}, save)


def check_model(model: str, args: argparse.Namespace, rows: list[dict]) -> None:
    import torch

    from rtdmd.datasets.text_prompts import read_prompt_file
    from rtdmd.utils.config import load_config

    folder, config = SPECS[model]
    prompts = [p['prompt'] for p in read_prompt_file('pickscore_train.txt')[:args.batch]]
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as root:
        measure(rows, model, 'write_snapshot', torch.device(args.device), lambda: build_pipeline(
            model, args.scale, args.device).save_pretrained(osp.join(root, folder)))
        common = {'weights_root': root, 'backbone.resolution': args.resolution,
                  'backbone.dtype': 'bfloat16', 'backbone.gradient_checkpointing': True}
        if model == 'flux2_klein_4b':
            common['backbone.generator_init'] = folder  # one snapshot serves both roles
        if args.scale == 'tiny':  # 512 (Qwen3) / 128 (T5) text tokens are slow on CPU
            common['backbone.max_sequence_length'] = 16
        lora = osp.join(root, 'stage1.pth')
        cfg = load_config(osp.join(REPO, 'configs/ac_dmd', f'{config}.py'), {
            **common, 'model.fake_update_ratio': 1,
            'model.matching.type': 'FinalStepMatching'})
        run_stage(model, 'stage1', cfg, prompts, args, rows, save=lora)
        cfg = load_config(osp.join(REPO, 'configs/rtdmd', f'{config}.py'), {
            **common, 'stages': None, 'model.group_size': args.group_size,
            'train_rewards': {'_delete_': True, 'main': dict(scorer=dict(
                type='ImageBrightnessReward'))}, 'model.init_checkpoint': lora})
        run_stage(model, 'stage2', cfg, prompts[:args.batch // args.group_size], args, rows, None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (no heavy import: ``--help`` is instant)."""
    parser = argparse.ArgumentParser(description='Real-size random-weight check of both stages.')
    parser.add_argument('--model', choices=[*SPECS, 'all'], default='all')
    parser.add_argument('--resolution', type=int, default=512)
    parser.add_argument('--batch', type=int, default=2, help='samples per step')
    parser.add_argument('--group-size', type=int, default=2, help='stage-2 K')
    parser.add_argument('--iters', type=int, default=1, help='train steps timed per stage')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--scale', choices=['full', 'tiny'], default='full')
    parser.add_argument('--tmpdir', help='where the random snapshots go (default: system temp)')
    parser.add_argument('--out', help='also write the rows as JSON here')
    parser.add_argument('--peak-tflops', type=float, default=989.0,
                        help='dense bf16 peak for the utilisation (H100/H200 SXM: 989)')
    args = parser.parse_args(argv)
    if args.batch % args.group_size or args.iters < 1:
        parser.error('--batch must be a multiple of --group-size, and --iters >= 1')
    import torch

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device} but CUDA is not available')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from rtdmd.utils.mmengine_compat import apply_mmengine_patches
    from rtdmd.utils.setup_env import register_all_modules
    apply_mmengine_patches()
    register_all_modules()
    cuda = torch.device(args.device).type == 'cuda'
    header = [
        f'rtdmd gpu_check on {torch.cuda.get_device_name(args.device) if cuda else "cpu"} '
        f'(torch {torch.__version__}): scale {args.scale}, {args.resolution} px, {args.batch} '
        f'samples per step (stage 2: {args.batch // args.group_size} prompt(s) x K='
        f'{args.group_size}), bf16 weights, gradient checkpointing, {args.iters} step(s) timed',
        'RANDOM weights. ' + (
            'Transformers at real size (FLUX.2-klein 4B: 3.88 B params, SD3.5-M: 2.24 B), VAEs '
            'and text encoders the real architectures (shipped snapshots); reward: image '
            'brightness (the training rewards\' memory: tools/plan.py).' if args.scale == 'full'
            else
            'Tiny transformers, VAEs and text stand-ins: a smoke test of the code path.'),
        'peak: ' + ('torch.cuda.max_memory_allocated, reset before each phase' if cuda else
                    'process max RSS so far (CPU: not reset between phases)')]
    print('\n'.join(header))
    print(f'{"model":<16}{"phase":<20}{"seconds":>10}{"warm s":>10}{"peak GiB":>10}  losses',
          flush=True)
    rows: list[dict] = []
    failed = []
    for model in (list(SPECS) if args.model == 'all' else [args.model]):
        try:
            check_model(model, args, rows)
        except Exception:  # report it and go on with the next model (e.g. out of memory)
            traceback.print_exc()
            failed.append(model)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            json.dump(dict(header=header, args=vars(args), rows=rows, failed=failed), f, indent=1)
    if failed:
        sys.exit(f'gpu_check failed for: {", ".join(failed)} (traceback above)')


if __name__ == '__main__':
    main()
