# The shapes world's FLUX.2-klein-shaped teacher, trained from scratch: the VAE (stage vae),
# then the FLUX.2 MMDiT and its Qwen3 encoder by flow matching with CFG dropout (stage flow).
# Ends with <work_dir>/flow/teacher, a Flux2KleinPipeline folder that Flux2KleinBackbone loads
# (pretrained=<folder>, resolution=32, max_sequence_length=24,
# text_encoder_out_layers=(1, 2, 3)); the shipped copy is rtdmd/assets/shapes/flux2.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/shapes_images.py',
          '../_base_/models/shapes_flux2_teacher.py', '../_base_/teachers/flow.py']
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=1))
train_dataloader = dict(batch_size=32)  # the flow stage's (the VAE stage's file sets its own)
stages = [
    dict(name='vae', config='shapes_flux2_vae.py'),
    dict(name='flow', init_from='vae'),
]
