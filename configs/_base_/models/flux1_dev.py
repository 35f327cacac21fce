# FLUX.1-dev (black-forest-labs/FLUX.1-dev; ALGORITHM.md 6.1, 6.2): guidance-distilled MMDiT,
# dynamic shift, CLIP-L pooled + T5 sequence (512 tokens). Put the snapshot in
# <weights_root>/FLUX.1-dev; weights_root is $RTDMD_WEIGHTS when set, else ./weights (or
# --cfg-options weights_root=...). The generator starts from the same snapshot (no generator_init).
weights_root = '{{$RTDMD_WEIGHTS:weights}}'
backbone = dict(
    type='FluxBackbone',
    weights_root='${weights_root}',
    pretrained='FLUX.1-dev',
    repo_id='black-forest-labs/FLUX.1-dev',
    # Double-stream blocks: all eight; single-stream blocks: to_q / to_k / to_v (peft suffixes).
    lora=dict(rank=32, alpha=64, init='gaussian',
              target_modules=['attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0',
                              'attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj',
                              'attn.to_add_out']),
    dtype='bfloat16',
    gradient_checkpointing=True,
    resolution=512,  # latents (16, 64, 64): 1024 packed tokens, sigmas [1, .849, .653, .385]
    max_sequence_length=512,  # T5 tokens (ALGORITHM.md 6.1)
)
