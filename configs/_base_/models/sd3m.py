# SD3-Medium (stabilityai/stable-diffusion-3-medium-diffusers; ALGORITHM.md 6.1, 6.2). Put the
# diffusers snapshot in <weights_root>/stable-diffusion-3-medium-diffusers; weights_root is
# $RTDMD_WEIGHTS when set, else ./weights (or --cfg-options weights_root=...).
weights_root = '{{$RTDMD_WEIGHTS:weights}}'
backbone = dict(
    type='SD3Backbone',
    weights_root='${weights_root}',
    pretrained='stable-diffusion-3-medium-diffusers',
    repo_id='stabilityai/stable-diffusion-3-medium-diffusers',
    lora=dict(rank=32, alpha=64, init='gaussian',
              target_modules=['attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0',
                              'attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj',
                              'attn.to_add_out']),
    dtype='bfloat16',
    gradient_checkpointing=True,
    resolution=1024,  # latents (16, 128, 128)
    max_sequence_length=128,  # T5 tokens (pitfall 23)
)
