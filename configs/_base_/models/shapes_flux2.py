# The shapes world's FLUX.2-klein-shaped teacher, shipped in rtdmd/assets/shapes/flux2 (trained
# by `python tools/train.py configs/teachers/shapes_flux2.py`): a Flux2KleinPipeline folder that
# Flux2KleinBackbone loads exactly as it loads klein-base. There is no step-distilled release of
# it, so the generator starts from the same base. float32 (CPU); LoRA rank 8, alpha 16 (the
# release's scale 2) on the release's FLUX.2 target list; latents (16, 8, 8), 64 tokens.
backbone = dict(
    type='Flux2KleinBackbone',
    pretrained='{{fileDirname}}/../../../rtdmd/assets/shapes/flux2',
    repo_id='rtdmd/assets/shapes/flux2 (python tools/train.py configs/teachers/shapes_flux2.py)',
    lora=dict(rank=8, alpha=16, init='gaussian', target_modules=None),
    dtype='float32',
    gradient_checkpointing=False,
    resolution=32,
    max_sequence_length=24,  # the chat template of the longest prompt is 23 Qwen3 tokens
    text_encoder_out_layers=(1, 2, 3),
)
