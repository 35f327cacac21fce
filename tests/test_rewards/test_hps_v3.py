"""HPSv3: a tiny random Qwen2-VL + reward head saved in the release's key layout, loaded via the
scorer (transformers 5), checked against an independent forward of the same weights."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.testing.flux2 import qwen_tokenizer

pytest.importorskip('transformers')

PROMPTS = ['a photo of a cat', 'an astronaut riding a green horse on the moon, oil painting',
           'coffee']
# Qwen2-VL-7B-Instruct's chat template (chat_template.json of the hub folder).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>',
           '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>')


def _tiny_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary (256 byte symbols + 444 merges) learnt offline on the release's
    instruction, so that its 2.6k characters take ~500 tokens and the CPU forward stays fast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from rtdmd.rewards.hps_v3 import INSTRUCTION, PROMPT_WITH_SPECIAL_TOKEN

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([INSTRUCTION + PROMPT_WITH_SPECIAL_TOKEN], trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    model = json.loads(bpe.to_str())['model']
    return model['vocab'], [tuple(m) for m in model['merges']]


VOCAB, MERGES = _tiny_bpe()
FIRST_SPECIAL = len(VOCAB)
IDS = {token: FIRST_SPECIAL + i for i, token in enumerate(SPECIAL)}
# sha256 of the release's INSTRUCTION.format(text_prompt='a photo of a cat') +
# prompt_with_special_token (hpsv3 1.0.0, hpsv3/dataset/data_collator_qwen.py).
RELEASE_USER_TEXT_SHA256 = 'ed13a1b1b6f42463518c1f55de40a864b97876aa12e6e2f367f0a0e44aa4196e'
# The state-dict keys of the release's Qwen2VLRewardModelBT under transformers 4.45.2
# (listed from that version at this config), per block / layer index i.
VISION_BLOCK_KEYS = [f'{m}.{p}' for m in ('norm1', 'norm2', 'attn.qkv', 'attn.proj', 'mlp.fc1',
                                          'mlp.fc2') for p in ('weight', 'bias')]
DECODER_LAYER_KEYS = (
    [f'self_attn.{n}_proj.{p}' for n in 'qkv' for p in ('weight', 'bias')]
    + ['self_attn.o_proj.weight', 'mlp.gate_proj.weight', 'mlp.up_proj.weight',
       'mlp.down_proj.weight', 'input_layernorm.weight', 'post_attention_layernorm.weight'])
OTHER_KEYS = (['visual.patch_embed.proj.weight', 'model.embed_tokens.weight', 'model.norm.weight',
               'lm_head.weight']
              + [f'visual.merger.{m}.{p}' for m in ('ln_q', 'mlp.0', 'mlp.2')
                 for p in ('weight', 'bias')]
              + [f'rm_head.{i}.{p}' for i in (0, 3, 5) for p in ('weight', 'bias')])
DEPTH = 2


def _release_keys() -> set[str]:
    return ({f'visual.blocks.{i}.{k}' for i in range(DEPTH) for k in VISION_BLOCK_KEYS}
            | {f'model.layers.{i}.{k}' for i in range(DEPTH) for k in DECODER_LAYER_KEYS}
            | set(OTHER_KEYS))


def _tiny_flat_config() -> dict:
    """Qwen2-VL-7B-Instruct's config.json (the flat 4.4x layout) at toy size."""
    return dict(
        architectures=['Qwen2VLForConditionalGeneration'], model_type='qwen2_vl',
        hidden_size=64, intermediate_size=96, num_hidden_layers=DEPTH, num_attention_heads=4,
        num_key_value_heads=2, hidden_act='silu', max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        vocab_size=FIRST_SPECIAL + len(SPECIAL) + 5,  # padded like the real 152064
        attention_dropout=0.0, use_cache=True, use_sliding_window=False, sliding_window=32768,
        max_window_layers=DEPTH, torch_dtype='float32', initializer_range=0.02,
        bos_token_id=IDS['<|endoftext|>'], eos_token_id=IDS['<|im_end|>'],
        vision_start_token_id=IDS['<|vision_start|>'], vision_end_token_id=IDS['<|vision_end|>'],
        vision_token_id=IDS['<|vision_pad|>'], image_token_id=IDS['<|image_pad|>'],
        video_token_id=IDS['<|video_pad|>'],
        rope_scaling={'type': 'mrope', 'mrope_section': [2, 3, 3]},
        vision_config=dict(depth=DEPTH, embed_dim=32, mlp_ratio=2, num_heads=2, in_chans=3,
                           hidden_size=64, patch_size=14, spatial_merge_size=2,
                           spatial_patch_size=14, temporal_patch_size=2))


def _tiny_tokenizer():
    """An offline byte-level BPE Qwen2 tokenizer with Qwen2-VL's special tokens."""
    tok = qwen_tokenizer(MERGES, SPECIAL, chat_template=None, vocab=VOCAB)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL] == [IDS[t] for t in SPECIAL]
    return tok


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """``(root, backbone, head)``: the tiny folders under ``root`` and the in-memory modules whose
    weights were saved (the independent reference)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    from rtdmd.rewards.hps_v3 import reward_head

    root = tmp_path_factory.mktemp('rewards')
    base = root / 'Qwen2-VL-7B-Instruct'
    base.mkdir()
    (base / 'config.json').write_text(json.dumps(_tiny_flat_config()))
    (base / 'chat_template.json').write_text(json.dumps({'chat_template': QWEN2VL_CHAT_TEMPLATE}))
    (base / 'preprocessor_config.json').write_text(json.dumps({
        'min_pixels': 3136, 'max_pixels': 12845056, 'patch_size': 14, 'temporal_patch_size': 2,
        'merge_size': 2, 'image_mean': [0.48145466, 0.4578275, 0.40821073],
        'image_std': [0.26862954, 0.26130258, 0.27577711],
        'image_processor_type': 'Qwen2VLImageProcessor', 'processor_class': 'Qwen2VLProcessor'}))
    _tiny_tokenizer().save_pretrained(base)

    config = AutoConfig.from_pretrained(base)
    config.text_config.vocab_size = len(SPECIAL) + FIRST_SPECIAL + 1  # + <|Reward|>
    torch.manual_seed(0)
    backbone = Qwen2VLForConditionalGeneration(config).eval()
    head = reward_head(64).eval()
    with torch.no_grad():  # a livelier head than the default init, so token choice shows
        for p in head.parameters():
            p.normal_(0, 0.5)
    # transformers 5 names -> the release's 4.45.2 names, written out here independently
    state = {}
    for key, value in backbone.state_dict().items():
        key = key.replace('model.visual.', 'visual.').replace('model.language_model.', 'model.')
        state[key] = value.contiguous()
    state.update({f'rm_head.{k}': v for k, v in head.state_dict().items()})
    assert set(state) == _release_keys()
    (root / 'HPSv3').mkdir()
    save_file(state, str(root / 'HPSv3' / 'HPSv3.safetensors'))
    return root, backbone, head


@pytest.fixture(scope='module')
def reward(release):
    import rtdmd.rewards.hps_v3  # noqa: F401  (registers)

    return REWARDS.build(dict(type='HPSv3', root=str(release[0]), dtype='float32'))


def _images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def test_scores(reward) -> None:
    images = _images()
    r = reward(images, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    torch.testing.assert_close(reward(images, PROMPTS), r, rtol=0, atol=0)  # deterministic
    details = reward.score_details(images, PROMPTS)
    torch.testing.assert_close(details[''], r)
    assert details['sigma'].shape == (3,) and (details['sigma'] > 0).all()
    assert r.std() > 1e-3  # the images / prompts are told apart
    assert not reward.differentiable and not reward.training


def test_batch_size_invariance(reward) -> None:
    images = _images()
    batch = reward.prepare_inputs(images, PROMPTS)
    mask = batch['attention_mask']
    assert mask[:, 0].all() and not mask[2, -1]  # right padding: the short prompt ends padded
    together = reward(images, PROMPTS)
    one_by_one = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_prompt_text_is_the_release_one(reward) -> None:
    from rtdmd.rewards.hps_v3 import hpsv3_messages, hpsv3_user_text

    user = hpsv3_user_text('a photo of a cat')
    assert hashlib.sha256(user.encode()).hexdigest() == RELEASE_USER_TEXT_SHA256
    assert user.endswith('Textual prompt - a photo of a cat\n\n\n\nPlease provide the overall '
                         'ratings of this image: <|Reward|>\n\nEND\n')
    rendered = reward.processor.apply_chat_template(
        hpsv3_messages(PROMPTS[:1]), tokenize=False, add_generation_prompt=True)
    assert rendered == [
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
        '<|vision_start|><|image_pad|><|vision_end|>' + user + '<|im_end|>\n'
        '<|im_start|>assistant\n']
    # the processor expands the image placeholder to one token per merged 2x2 patch
    batch = reward.prepare_inputs(_images(1), PROMPTS[:1])
    ids = batch['input_ids'][0]
    n_image = int(batch['image_grid_thw'][0].prod()) // 4
    assert n_image == (392 // 28) * (560 // 28)  # 64 x 96 -> smart_resize -> 392 x 560
    text = reward.processor.tokenizer.decode(ids)
    assert text == rendered[0].replace('<|image_pad|>', '<|image_pad|>' * n_image)
    assert int((ids == reward.reward_token_id).sum()) == 1
    assert reward.reward_token_id == FIRST_SPECIAL + len(SPECIAL)  # appended after the vocab


def _independent_hidden(backbone, batch) -> torch.Tensor:
    """The release's forward on the saved modules: token embeddings, visual embeddings scattered
    into the image slots, decoder with its default (sequential) positions -> (B, L, D)."""
    ids = batch['input_ids']
    inner = backbone.model
    embeds = inner.language_model.embed_tokens(ids)
    visual = inner.visual(batch['pixel_values'], grid_thw=batch['image_grid_thw']).pooler_output
    slots = (ids == IDS['<|image_pad|>']).nonzero()
    assert len(slots) == len(visual)
    embeds = embeds.clone()
    embeds[slots[:, 0], slots[:, 1]] = visual
    return inner.language_model(inputs_embeds=embeds,
                                attention_mask=batch['attention_mask']).last_hidden_state


def _head(head, x: torch.Tensor) -> torch.Tensor:
    w = {k: v for k, v in head.state_dict().items()}
    x = torch.relu(x @ w['0.weight'].T + w['0.bias'])
    x = torch.relu(x @ w['3.weight'].T + w['3.bias'])
    return x @ w['5.weight'].T + w['5.bias']


def test_head_reads_the_hidden_state_at_the_reward_token(release, reward) -> None:
    _, backbone, head = release
    images = _images()
    batch = reward.prepare_inputs(images, PROMPTS)
    with torch.no_grad():
        hidden = _independent_hidden(backbone, batch)
        rows, cols = (batch['input_ids'] == reward.reward_token_id).nonzero(as_tuple=True)
        assert rows.tolist() == [0, 1, 2]
        expected = _head(head, hidden[rows, cols])
        ours = reward.reward_outputs(images, PROMPTS)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reward(images, PROMPTS), expected[:, 0], atol=1e-5, rtol=1e-5)
        # the neighbouring tokens and the last token give other values
        for other in (cols - 1, cols + 1, batch['attention_mask'].sum(1) - 1):
            assert (_head(head, hidden[rows, other])[:, 0] - expected[:, 0]).abs().min() > 1e-3
        # Qwen2-VL's own 3-D M-RoPE positions (transformers' default) are NOT the release's
        mrope = backbone.model(**{k: batch[k] for k in ('input_ids', 'attention_mask',
                                                        'pixel_values', 'image_grid_thw',
                                                        'mm_token_type_ids')})
        off = _head(head, mrope.last_hidden_state[rows, cols])[:, 0]
        assert (off - expected[:, 0]).abs().max() > 1e-3


def test_image_preprocessing_is_the_release_one(reward) -> None:
    """smart_resize sizes of the release, PIL bicubic on uint8, then the 4.45.2 processor math."""
    from PIL import Image

    from rtdmd.rewards.hps_v3 import smart_resize, to_pil_images

    # values of the release's smart_resize with min_pixels = max_pixels = 256 * 28 * 28
    for (h, w), size in {(512, 512): (448, 448), (1024, 1024): (448, 448), (64, 96): (392, 560),
                         (720, 1280): (336, 588), (768, 1024): (364, 504)}.items():
        assert smart_resize(h, w) == size
    images = _images(2)
    pil = to_pil_images(images)
    uint8 = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ref = Image.fromarray(uint8[1]).resize((560, 392), Image.BICUBIC)
    assert np.array_equal(np.asarray(pil[1]), np.asarray(ref))
    # Qwen2VLImageProcessor of transformers 4.45.2: rescale, normalise, duplicate the frame
    # (temporal patch 2), cut 14 x 14 patches grouped by 2 x 2 merge windows
    x = np.asarray(ref).astype(np.float64) / 255.0
    x = (x - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
        [0.26862954, 0.26130258, 0.27577711])
    x = np.tile(x.transpose(2, 0, 1)[None], (2, 1, 1, 1))  # (T=2, C, H, W)
    gh, gw = 392 // 14, 560 // 14
    x = x.reshape(1, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    x = x.reshape(gh * gw, 3 * 2 * 14 * 14)
    batch = reward.prepare_inputs(images, PROMPTS[:2])
    assert batch['image_grid_thw'].tolist() == [[1, gh, gw]] * 2
    torch.testing.assert_close(batch['pixel_values'][gh * gw:].double(), torch.from_numpy(x),
                               atol=1e-5, rtol=0)


def test_bfloat16_vision_rope_rounds_like_the_release(release) -> None:
    """transformers 4.45.2 (the release) builds the vision RoPE table in inv_freq's dtype, which
    the release's cast makes bfloat16: ``outer(arange(max_side), inv_freq)[pos].cos()``."""
    from rtdmd.rewards.hps_v3 import HPSv3

    reward = HPSv3(root=str(release[0]), dtype='bfloat16')
    seen = []
    reward.model.visual.rotary_pos_emb.register_forward_hook(lambda m, i, o: seen.append(o))
    r = reward(_images(1), PROMPTS[:1])
    assert r.dtype == torch.float32 and torch.isfinite(r).all()
    cos, sin = seen[0]
    gh, gw = 392 // 14, 560 // 14
    # 4.45.2's rot_pos_emb: (h, w) of each patch, in 2 x 2 merge-window order
    hpos = torch.arange(gh)[:, None].expand(-1, gw).reshape(gh // 2, 2, gw // 2, 2)
    wpos = torch.arange(gw)[None].expand(gh, -1).reshape(gh // 2, 2, gw // 2, 2)
    pos = torch.stack([hpos.permute(0, 2, 1, 3).flatten(), wpos.permute(0, 2, 1, 3).flatten()], -1)
    dim = 32 // 2 // 2  # half the vision head dim (embed 32 / 2 heads)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    table = torch.outer(torch.arange(max(gh, gw), dtype=torch.bfloat16), inv_freq.bfloat16())
    freqs = table[pos].flatten(1)
    torch.testing.assert_close(cos, freqs.cos().repeat(1, 2).float(), rtol=0, atol=0)
    torch.testing.assert_close(sin, freqs.sin().repeat(1, 2).float(), rtol=0, atol=0)
    exact = torch.outer(torch.arange(max(gh, gw), dtype=torch.float), inv_freq)[pos].flatten(1)
    assert (cos - exact.cos().repeat(1, 2)).abs().max() > 1e-3  # the rounding is real


def test_missing_weights_and_bad_input(tmp_path, release, reward) -> None:
    import shutil

    from rtdmd.rewards.weights import MissingRewardWeightsError

    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)HPSv3.*HPSv3.safetensors.*MizzenAI/HPSv3'):
        REWARDS.build(dict(type='HPSv3', root=str(tmp_path), dtype='float32'))
    (tmp_path / 'HPSv3').mkdir()
    shutil.copy(release[0] / 'HPSv3' / 'HPSv3.safetensors', tmp_path / 'HPSv3')
    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)Qwen2-VL-7B-Instruct.*config.json.*Qwen/Qwen2-VL-7B-Instruct'):
        REWARDS.build(dict(type='HPSv3', root=str(tmp_path), dtype='float32'))
    with pytest.raises(ValueError, match='one text prompt per image'):
        reward(_images(2), ['only one'])
    with pytest.raises(ValueError, match='exactly one <\\|Reward\\|>'):
        reward(_images(1), ['a <|Reward|> cat'])
    with pytest.raises(ValueError, match='expected images'):
        reward(torch.rand(2, 64, 64), PROMPTS[:2])
