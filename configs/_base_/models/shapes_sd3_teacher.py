# The SD3 family at shapes-world size (SD3ShapesFamily): CLIP-L / CLIP-G / T5 text encoders,
# an AutoencoderKL with one 2x down-sampling (latents 4 x 16 x 16), a 4-block MMDiT of width 128
# (64 image tokens, 2x2 patches), the SD3 scheduler (static shift 3.0).
family = dict(
    type='SD3ShapesFamily', image_size=32, vae_channels=(16, 32), latent_channels=4,
    num_layers=4, attention_head_dim=32, num_attention_heads=4, clip_dim=32, clip_layers=2,
    t5_dim=64, t5_layers=2, text_tokens=16, shift=3.0)
