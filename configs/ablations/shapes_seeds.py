# The shapes world's full table over three training seeds:
#   python tools/sweep.py configs/ablations/shapes_seeds.py
# Every stage is reseeded (randomness reaches every stage); the held-out prompts and their
# sampling seeds stay fixed, so the teacher's rows repeat and the students' spread is training's.
_MODELS = ['teacher_28steps_cfg4', 'teacher_4steps_cfg4', 'ac_dmd', 'dmd2', 'rtdmd', 'grpo_only']
sweep = dict(
    config='../rtdmd/shapes_4step_table.py',
    axes=dict(seed=dict(values=[42, 1, 2], keys=['randomness.seed'])),
    metrics=[f'{m}.{k}' for m in _MODELS for k in ('strict', 'partial', 'soft', 'fidelity',
                                                   'clean')],
)
