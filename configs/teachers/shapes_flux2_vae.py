# Stage 1 of configs/teachers/shapes_flux2.py: the flux2 family's VAE on the shapes world.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/shapes_images.py',
          '../_base_/models/shapes_flux2_teacher.py', '../_base_/teachers/vae.py']
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=1))
train_dataloader = dict(batch_size=32)
