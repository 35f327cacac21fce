# The shapes world's students: the backbone of a teacher trained here, loaded exactly as the
# released weights are. `backbone` refers to one of the named presets `backbones`; the other is
# one option away (it reaches every stage): --cfg-options 'backbone=${backbones.sd3}'.
# There is no step-distilled release of these teachers, so the generator starts from the same
# base. float32 (CPU); LoRA rank 8, alpha 16 (the release's scale 2) on each family's release
# target list.
backbones = dict(
    # FLUX.2-klein shape, rtdmd/assets/shapes/flux2 (configs/teachers/shapes_flux2.py): latents
    # (16, 8, 8), 64 tokens; the chat template of the longest prompt is 23 Qwen3 tokens.
    flux2=dict(
        type='Flux2KleinBackbone',
        pretrained='{{fileDirname}}/../../../rtdmd/assets/shapes/flux2',
        repo_id='rtdmd/assets/shapes/flux2 (python tools/train.py '
                'configs/teachers/shapes_flux2.py)',
        lora=dict(rank=8, alpha=16, init='gaussian', target_modules=None),
        dtype='float32', gradient_checkpointing=False, resolution=32, max_sequence_length=24,
        text_encoder_out_layers=(1, 2, 3)),
    # SD3 shape, rtdmd/assets/shapes/sd3 (configs/teachers/shapes_sd3.py): latents (4, 16, 16),
    # 64 tokens of 2 x 2 patches; CLIP-L / CLIP-G / T5 with 16 tokens (the longest prompt's 15).
    sd3=dict(
        type='SD3Backbone',
        pretrained='{{fileDirname}}/../../../rtdmd/assets/shapes/sd3',
        repo_id='rtdmd/assets/shapes/sd3 (python tools/train.py configs/teachers/shapes_sd3.py)',
        lora=dict(rank=8, alpha=16, init='gaussian', target_modules=None),
        dtype='float32', gradient_checkpointing=False, vae_gradient_checkpointing=False,
        resolution=32, max_sequence_length=16),
)
backbone = '${backbones.flux2}'
