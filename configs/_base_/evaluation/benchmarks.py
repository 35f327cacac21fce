# The release's evaluation protocol (ALGORITHM.md 5.2): which reward scores which prompt set.
# `python tools/test.py CONFIG --benchmarks [SUITE ...]` runs it. Reward weights load from
# $RTDMD_REWARD_WEIGHTS (docs/rewards.md lists each scorer's folder and source).
benchmark = dict(
    rewards=dict(
        clipscore=dict(type='CLIPScore'),
        pickscore=dict(type='PickScore'),  # x26 = the paper tables' PickScore
        hpsv2=dict(type='HPSv2'),
        aesthetic=dict(type='AestheticScore'),
        imagereward=dict(type='ImageReward'),
        hpsv3=dict(type='HPSv3'),
        geneval=dict(type='GenEvalReward'),
        geneval2=dict(type='GenEval2Reward'),
        ocr=dict(type='OCRReward'),
    ),
    suites=dict(
        drawbench=dict(prompts='drawbench',
                       rewards=['clipscore', 'pickscore', 'hpsv2', 'aesthetic', 'imagereward']),
        hpsv3=dict(prompts='hpsv3', rewards=['hpsv3']),
        geneval=dict(prompts='geneval', rewards=['geneval']),
        geneval2=dict(prompts='geneval2', rewards=['geneval2']),
        ocr=dict(prompts='ocr', rewards=['ocr']),
    ),
    default_suites=['drawbench', 'hpsv3', 'geneval', 'geneval2', 'ocr'],
    # Full prompt sets, as the release's training-time evaluation (its standalone inference
    # recipe caps each set at 64 prompts: --max-prompts 64).
    seeds=[42],
    batch_size=4,
    max_prompts=None,
    # The teacher reference: 50 Euler steps with the model's teacher_guidance (real CFG;
    # FLUX.1-dev: the guidance embedding).
    teacher=dict(steps=50, guidance_scale=None),
)
