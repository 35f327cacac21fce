# Runtime shared by every experiment: scope, hooks, logging, TensorBoard.
default_scope = 'rtdmd'

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Atomic, checksummed checkpoints; old ones are removed only after a new one is verified.
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=3,
                    save_last=True),
    # Non-finite steps are skipped by NonFiniteGuardOptimWrapper; this many in a row stop the run.
    nonfinite=dict(type='NonFiniteGuardHook', max_consecutive=10),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    rng_state=dict(type='RNGStateHook'),
    # Sample grids of the same prompts and noise into TensorBoard and <work_dir>/vis.
    visualization=dict(type='SampleVisualizationHook', interval=500),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # Collective timeout in seconds: long enough for every rank to load a 10+ GB model.
    dist_cfg=dict(backend='nccl', timeout=1800),
)

visualizer = dict(type='Visualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
log_processor = dict(by_epoch=False, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42)
