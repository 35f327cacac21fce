# The FLUX.2-klein family at shapes-world size (Flux2ShapesFamily): a 3-layer Qwen3 (hidden
# states 1, 2, 3 stacked: joint_attention_dim 96, 24 chat-template tokens), an
# AutoencoderKLFlux2 with one 2x down-sampling (latents 4 x 16 x 16, patchified 16 x 8 x 8), a
# FLUX.2 MMDiT of width 96 (2 double + 2 single blocks, 64 image tokens), dynamic shift. Width
# 96 rather than 128 halves the flow stage's cost, which sets the training budget on 2 cores.
family = dict(
    type='Flux2ShapesFamily', image_size=32, vae_channels=(16, 32), latent_channels=4,
    num_layers=2, num_single_layers=2, attention_head_dim=24, num_attention_heads=4,
    qwen_dim=32, qwen_layers=3, text_layers=(1, 2, 3), text_tokens=24)
