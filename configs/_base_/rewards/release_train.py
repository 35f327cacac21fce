# The release's stage-2 training rewards (ALGORITHM.md 6.3): CLIPScore, HPSv2, PickScore and
# GenEval, weight 1 each. Advantages are standardised per reward, then weighted (4.4); reward
# back-propagation uses the differentiable ones (CLIPScore, HPSv2, PickScore; pitfall 10).
# A stage-2 leaf uses them with `model = dict(rewards='${train_rewards}')`. Weights load from
# $RTDMD_REWARD_WEIGHTS (docs/rewards.md). To train on other rewards, e.g. a quick stand-in:
#   --cfg-options train_rewards._delete_=True train_rewards.main.scorer.type=ImageBrightnessReward
train_rewards = dict(
    clipscore=dict(scorer=dict(type='CLIPScore'), weight=1.0),
    hpsv2=dict(scorer=dict(type='HPSv2'), weight=1.0),
    pickscore=dict(scorer=dict(type='PickScore'), weight=1.0),
    geneval=dict(scorer=dict(type='GenEvalReward'), weight=1.0),
)
