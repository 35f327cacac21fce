# The shapes world's fidelity feature network (ShapesFeatureNet): a small CNN trained on
# renderings of every prompt to count the objects of each colour-shape pair, name the
# dominant colour of each 4 x 4 grid cell and tell which corruption (noise, blur, colour shift,
# contrast) an image received, if any. Its features define the fidelity distance
# (rtdmd/evaluation/shapes_fidelity.py); the weights end in <work_dir>/features, shipped as
# rtdmd/assets/shapes/features.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/shapes_images.py']
model = dict(type='ShapesFeatureTrainer', width=16, feature_dim=64, seed=0)
train_dataloader = dict(dataset=dict(split='all', seed=7))
optim_wrapper = dict(type='NonFiniteGuardOptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='OneCycleLR', eta_max=2e-3, total_steps='${train_cfg.max_iters}',
                        pct_start=0.05, anneal_strategy='cos', div_factor=25.0,
                        final_div_factor=100.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1500)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=1))
custom_hooks = [dict(type='ExportWeightsHook', out_dir='features')]
