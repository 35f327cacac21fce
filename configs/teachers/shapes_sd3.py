# The shapes world's SD3-shaped teacher, trained from scratch: the VAE (stage vae), then the
# MMDiT and its CLIP-L / CLIP-G / T5 encoders by flow matching with CFG dropout (stage flow).
# Ends with <work_dir>/flow/teacher, a StableDiffusion3Pipeline folder that SD3Backbone loads
# (pretrained=<folder>, resolution=32, max_sequence_length=16); the shipped copy is
# rtdmd/assets/shapes/sd3.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/shapes_images.py',
          '../_base_/models/shapes_sd3_teacher.py', '../_base_/teachers/flow.py']
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=1))
train_dataloader = dict(batch_size=32)  # the flow stage's (the VAE stage's file sets its own)
stages = [
    dict(name='vae', config='shapes_sd3_vae.py'),
    dict(name='flow', init_from='vae'),
]
