# FLUX.2-klein 9B (ALGORITHM.md 6.1, 6.2; pitfall 20): teacher and fake score start from
# black-forest-labs/FLUX.2-klein-base-9B, the generator from the step-distilled
# black-forest-labs/FLUX.2-klein-9B. Put both diffusers snapshots in <weights_root>/<repo name>;
# weights_root is $RTDMD_WEIGHTS when set, else ./weights (or --cfg-options weights_root=...).
weights_root = '{{$RTDMD_WEIGHTS:weights}}'
backbone = dict(
    type='Flux2KleinBackbone',
    weights_root='${weights_root}',
    pretrained='FLUX.2-klein-base-9B',
    generator_init='FLUX.2-klein-9B',
    repo_id='black-forest-labs/FLUX.2-klein-base-9B',
    generator_repo_id='black-forest-labs/FLUX.2-klein-9B',
    # target_modules None: the release's list for the loaded transformer, i.e. to_q, to_k, to_v,
    # to_out.0, add_{q,k,v}_proj, to_add_out, to_qkv_mlp_proj and
    # single_transformer_blocks.{i}.attn.to_out for its 24 single blocks (flux2_lora_targets).
    lora=dict(rank=32, alpha=64, init='gaussian', target_modules=None),
    dtype='bfloat16',
    gradient_checkpointing=True,
    resolution=512,  # latents (128, 32, 32): 1024 tokens, sigmas [1, .958, .884, .718]
    max_sequence_length=512,  # Qwen3 tokens, chat template, padded
    text_encoder_out_layers=(9, 18, 27),  # stacked on features (Qwen3-8B: 3 x 4096 = 12288)
)
