"""ImageReward on a tiny random-weight BLIP saved as a release-format ``ImageReward.pt``.

The fake checkpoint carries the release's ORIGINAL key names (``blip.visual_encoder.*`` in BLIP's
timm-style ViT naming, ``blip.text_encoder.*`` in BLIP ``med.py`` naming, ``mlp.layers.*``, plus
the unused ``blip.vision_proj`` / ``blip.text_proj``), next to a tiny ``med_config.json`` and an
offline WordPiece tokenizer, and is loaded through the scorer's production path. The real input
size (224, so the real preprocessing runs) is kept; everything else is tiny (patch 32, width 32,
2 layers each).

Independent references: timm's ``VisionTransformer`` (the class BLIP's ``vit.py`` is adapted
from; same parameter names) for the image tower, a plain-torch BERT-with-cross-attention written
here from ``med.py`` for the text tower, and the head as bare ``F.linear`` calls. When
``$IMAGE_REWARD_SRC`` points at the unpacked ``image-reward==1.5`` wheel, the release's own
``vit.py``, ``med.py`` (import paths patched for transformers 5) and ``ImageReward.score_gard`` /
``ImageReward.score`` are run as well.
"""

from __future__ import annotations

import json
import math
import os
import os.path as osp
import re
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd.registry import REWARDS
from rtdmd.rewards.image_reward import ImageReward, image_reward_preprocess
from rtdmd.rewards.preprocess import CLIP_MEAN, CLIP_STD
from rtdmd.rewards.weights import MissingRewardWeightsError

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              patch_size=32)  # image_size stays 224 -> 7 x 7 patches + [CLS]
WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'an', 'the', 'of', 'on', 'photo',
         'cat', 'red', 'car', 'two', 'dog', '##s', 'table', 'astronaut', 'cup', 'coffee', 'in',
         'space', 'with', 'long', 'very']
MED = dict(architectures=['BertModel'], attention_probs_dropout_prob=0.1, hidden_act='gelu',
           hidden_dropout_prob=0.1, hidden_size=32, initializer_range=0.02, intermediate_size=64,
           layer_norm_eps=1e-12, max_position_embeddings=40, model_type='bert',
           num_attention_heads=2, num_hidden_layers=2, pad_token_id=0, type_vocab_size=2,
           vocab_size=len(WORDS) + 2, encoder_width=32, add_cross_attention=True)
PROMPTS = ['a photo of a cat', 'an astronaut in space',
           'two red cars on the table with a cup of coffee ' * 4]  # the last one is truncated
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the release's ImageReward.mean / .std


def _release_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release ``ImageReward`` state dict, written from BLIP's sources."""
    d, n_img = VISION['hidden_size'], (224 // VISION['patch_size']) ** 2 + 1
    p, i_v = VISION['patch_size'], VISION['intermediate_size']
    h, i_t, v, pos = MED['hidden_size'], MED['intermediate_size'], MED['vocab_size'], MED[
        'max_position_embeddings']
    keys: dict[str, tuple[int, ...]] = {
        'blip.visual_encoder.cls_token': (1, 1, d), 'blip.visual_encoder.pos_embed': (1, n_img, d),
        'blip.visual_encoder.patch_embed.proj.weight': (d, 3, p, p),
        'blip.visual_encoder.patch_embed.proj.bias': (d,),
        'blip.visual_encoder.norm.weight': (d,), 'blip.visual_encoder.norm.bias': (d,)}
    for i in range(VISION['num_hidden_layers']):
        b = f'blip.visual_encoder.blocks.{i}.'
        for name, shape in [('norm1', (d,)), ('norm2', (d,)), ('attn.qkv', (3 * d, d)),
                            ('attn.proj', (d, d)), ('mlp.fc1', (i_v, d)), ('mlp.fc2', (d, i_v))]:
            keys[f'{b}{name}.weight'], keys[f'{b}{name}.bias'] = shape, shape[:1]
    t = 'blip.text_encoder.'
    keys.update({f'{t}embeddings.word_embeddings.weight': (v, h),
                 f'{t}embeddings.position_embeddings.weight': (pos, h),
                 f'{t}embeddings.LayerNorm.weight': (h,), f'{t}embeddings.LayerNorm.bias': (h,)})
    for i in range(MED['num_hidden_layers']):
        b = f'{t}encoder.layer.{i}.'
        for name, shape in [
                ('attention.self.query', (h, h)), ('attention.self.key', (h, h)),
                ('attention.self.value', (h, h)), ('attention.output.dense', (h, h)),
                ('attention.output.LayerNorm', (h,)), ('crossattention.self.query', (h, h)),
                ('crossattention.self.key', (h, d)), ('crossattention.self.value', (h, d)),
                ('crossattention.output.dense', (h, h)), ('crossattention.output.LayerNorm', (h,)),
                ('intermediate.dense', (i_t, h)), ('output.dense', (h, i_t)),
                ('output.LayerNorm', (h,))]:
            keys[f'{b}{name}.weight'], keys[f'{b}{name}.bias'] = shape, shape[:1]
    for idx, (n_out, n_in) in zip((0, 2, 4, 6, 7),
                                  [(1024, h), (128, 1024), (64, 128), (16, 64), (1, 16)],
                                  strict=True):
        keys[f'mlp.layers.{idx}.weight'], keys[f'mlp.layers.{idx}.bias'] = (n_out, n_in), (n_out,)
    for proj, width in (('vision_proj', d), ('text_proj', h)):  # in the file, unused by the reward
        keys[f'blip.{proj}.weight'], keys[f'blip.{proj}.bias'] = (256, width), (256,)
    return keys


def _release_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """Random weights with the release's names; scales chosen so no layer is near-degenerate."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in _release_keys().items():
        x = torch.randn(shape, generator=g)
        if re.search(r'(norm\d?|LayerNorm)\.weight$', key):
            x = 1 + 0.1 * x
        elif key.endswith('bias'):
            x = 0.1 * x
        elif key.endswith('weight') and len(shape) >= 2 and 'embeddings' not in key:
            x = x / math.sqrt(float(np.prod(shape[1:])))
        else:  # embeddings, cls token, position embeddings
            x = 0.5 * x
        sd[key] = x
    # The release's text encoder also saves its position_ids buffer.
    sd['blip.text_encoder.embeddings.position_ids'] = torch.arange(
        MED['max_position_embeddings'])[None]
    return sd


def _write_tokenizer(path: str) -> None:
    from transformers import BertTokenizer

    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(path)
    with open(osp.join(path, 'vocab.txt'), 'w') as f:
        f.write('\n'.join(WORDS) + '\n')


def _write_release_folder(root: str, state_dict: dict[str, Tensor]) -> None:
    os.makedirs(osp.join(root, 'ImageReward'), exist_ok=True)
    torch.save(state_dict, osp.join(root, 'ImageReward', 'ImageReward.pt'))
    with open(osp.join(root, 'ImageReward', 'med_config.json'), 'w') as f:
        json.dump(MED, f)


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('rewards'))
    _write_release_folder(root, _release_state_dict())
    os.makedirs(osp.join(root, 'bert-base-uncased'))
    _write_tokenizer(osp.join(root, 'bert-base-uncased'))
    return root


@pytest.fixture(scope='module')
def scorer(root) -> ImageReward:
    return REWARDS.build(dict(type='ImageReward', root=root, vision_config=VISION))


@pytest.fixture(scope='module')
def grad_scorer(root) -> ImageReward:
    return ImageReward(root=root, vision_config=VISION, differentiable=True)


def _photos(size: tuple[int, int] = (256, 320)) -> Tensor:
    """Three real photographs resized to ``size`` (H, W), floats in [0, 1]."""
    import skimage.data
    from PIL import Image

    imgs = [np.asarray(Image.fromarray(f()).resize(size[::-1], Image.BICUBIC))
            for f in (skimage.data.chelsea, skimage.data.astronaut, skimage.data.coffee)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


# --- independent reference ---------------------------------------------------------------------

def _lin(sd: dict[str, Tensor], x: Tensor, name: str) -> Tensor:
    return F.linear(x, sd[f'{name}.weight'], sd[f'{name}.bias'])


def _ln(sd: dict[str, Tensor], x: Tensor, name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps)


def _bert_attention(sd: dict[str, Tensor], x: Tensor, ctx: Tensor, name: str,
                    bias: Tensor | None) -> Tensor:
    """``med.py`` BertAttention: softmax(q k^T / sqrt(d) + mask) v -> dense -> LN(. + x)."""
    heads = MED['num_attention_heads']

    def split(t: Tensor) -> Tensor:
        return t.view(*t.shape[:2], heads, -1).transpose(1, 2)

    q, k, v = (split(_lin(sd, src, f'{name}.self.{w}'))
               for w, src in (('query', x), ('key', ctx), ('value', ctx)))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return _ln(sd, _lin(sd, out, f'{name}.output.dense') + x, f'{name}.output.LayerNorm',
               MED['layer_norm_eps'])


def _reference_cls(sd: dict[str, Tensor], ids: Tensor, mask: Tensor, image: Tensor) -> Tensor:
    """The text encoder's [CLS] output, ``med.py`` in plain torch, from the release keys."""
    sd = {k.removeprefix('blip.text_encoder.'): v for k, v in sd.items()}
    eps = MED['layer_norm_eps']
    x = F.embedding(ids, sd['embeddings.word_embeddings.weight'])
    x = _ln(sd, x + sd['embeddings.position_embeddings.weight'][:ids.shape[1]],
            'embeddings.LayerNorm', eps)
    bias = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py's extended mask
    for i in range(MED['num_hidden_layers']):
        name = f'encoder.layer.{i}'
        x = _bert_attention(sd, x, x, f'{name}.attention', bias)
        x = _bert_attention(sd, x, image, f'{name}.crossattention', None)  # all image tokens
        h = F.gelu(_lin(sd, x, f'{name}.intermediate.dense'))
        x = _ln(sd, _lin(sd, h, f'{name}.output.dense') + x, f'{name}.output.LayerNorm', eps)
    return x[:, 0]


def _timm_vit(sd: dict[str, Tensor]) -> nn.Module:
    timm_vit = pytest.importorskip('timm.models.vision_transformer')
    vit = timm_vit.VisionTransformer(
        img_size=224, patch_size=VISION['patch_size'], embed_dim=VISION['hidden_size'],
        depth=VISION['num_hidden_layers'], num_heads=VISION['num_attention_heads'],
        mlp_ratio=VISION['intermediate_size'] / VISION['hidden_size'], qkv_bias=True,
        num_classes=0, global_pool='', norm_layer=partial(nn.LayerNorm, eps=1e-6))
    prefix = 'blip.visual_encoder.'
    vit.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return vit.eval()


def _reference_reward(sd: dict[str, Tensor], cls: Tensor) -> Tensor:
    x = cls
    for idx in (0, 2, 4, 6, 7):  # no activations between the head's linear layers
        x = _lin(sd, x, f'mlp.layers.{idx}')
    return (x.squeeze(-1) - MEAN) / STD


def _reference_tokens(root: str, prompts: list[str]) -> dict[str, Tensor]:
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(osp.join(root, 'bert-base-uncased'))
    return tok(prompts, padding='max_length', truncation=True, max_length=35, return_tensors='pt')


# --- tests -------------------------------------------------------------------------------------

def test_shape_determinism_and_prompt_dependence(scorer) -> None:
    images = _photos()
    assert not scorer.differentiable and scorer.output_scale
    r = scorer(images, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    torch.testing.assert_close(scorer(images, PROMPTS), r, rtol=0, atol=0)
    assert not torch.allclose(scorer(images, PROMPTS[::-1]), r, atol=1e-3)
    assert not torch.allclose(scorer(images.flip(0), PROMPTS), r, atol=1e-3)


def test_batch_size_invariance(scorer) -> None:
    images = _photos()
    batch = scorer(images, PROMPTS)
    single = torch.cat([scorer(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)


def test_matches_an_independent_reference(root, scorer) -> None:
    """Key conversion + transformers BLIP == timm ViT + plain-torch med.py BERT + linear head."""
    sd = torch.load(osp.join(root, 'ImageReward', 'ImageReward.pt'), weights_only=True)
    vit = _timm_vit(sd)
    assert set(vit.state_dict()) == {k.removeprefix('blip.visual_encoder.') for k in sd
                                     if k.startswith('blip.visual_encoder.')}
    images = _photos()
    pixels = image_reward_preprocess(images)
    with torch.no_grad():
        ref_image = vit.forward_features(pixels)
        ours_image = scorer.vision(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(ours_image, ref_image, rtol=1e-5, atol=1e-5)
        tokens = _reference_tokens(root, PROMPTS)
        assert tokens['attention_mask'].sum(1).tolist()[-1] == 35  # the long prompt truncated
        ref_cls = _reference_cls(sd, tokens['input_ids'], tokens['attention_mask'], ref_image)
        torch.testing.assert_close(scorer.cls_features(images, PROMPTS), ref_cls,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scorer(images, PROMPTS), _reference_reward(sd, ref_cls),
                                   rtol=1e-5, atol=1e-5)
    assert scorer.ignored_keys == []


def test_gradients(scorer, grad_scorer) -> None:
    images = _photos().requires_grad_(True)
    # Not differentiable by default (as in the release): no graph is built.
    assert not scorer(images, PROMPTS).requires_grad
    assert grad_scorer.differentiable
    r = grad_scorer(images, PROMPTS)
    torch.testing.assert_close(r.detach(), scorer(images, PROMPTS))
    r.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in grad_scorer.parameters())
    # Finite-difference check of one directional derivative (float64 copy of the scorer).
    import copy

    s64 = copy.deepcopy(grad_scorer).double()
    x = _photos()[:1].double().requires_grad_(True)
    direction = torch.randn_like(x, generator=torch.Generator().manual_seed(3))
    s64(x, PROMPTS[:1]).sum().backward()
    eps = 1e-5
    with torch.no_grad():
        fd = (s64(x + eps * direction, PROMPTS[:1]) - s64(x - eps * direction, PROMPTS[:1]))
    torch.testing.assert_close((x.grad * direction).sum(), fd.sum() / (2 * eps),
                               rtol=1e-4, atol=1e-6)


def _release_transform(pil) -> Tensor:
    """The release's ``_transform(224)`` (torchvision on PIL), verbatim."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    return Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224),
                    lambda im: im.convert('RGB'), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])(pil)


@pytest.mark.parametrize('photo', ['chelsea', 'astronaut'])
def test_preprocessing_matches_the_release_on_pil(photo: str) -> None:
    """The tensor preprocessing vs the release's PIL recipe, on real photographs.

    The resize filters differ slightly (PIL's fixed-point bicubic on uint8, rounded and clipped;
    torch's antialiased bicubic in float, clamped to [0, 1] here): measured max |diff| 0.015
    (chelsea, 300x451 -> 224x336 -> crop) and 0.071 (astronaut, 512x512 -> 224x224) in
    normalised units, i.e. ~1 and ~5 levels of 255 on the sharpest edges, mean |diff| ~4e-3
    (about 1/255 after the ~0.27 std). Without the clamp the max would be 0.022 and 0.20.
    Against torchvision's tensor transforms (the same kernel) it is exact up to float error.
    """
    data = pytest.importorskip('skimage.data')
    import torchvision.transforms.v2 as T
    from PIL import Image

    array = getattr(data, photo)()
    ref = _release_transform(Image.fromarray(array))
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    ours = image_reward_preprocess(x)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    diff = (ours - ref).abs()
    assert diff.mean() < 1e-2 and diff.max() < 0.1, (diff.mean(), diff.max())
    tv = T.Compose([T.Resize(224, T.InterpolationMode.BICUBIC, antialias=True),
                    T.CenterCrop(224), lambda t: t.clamp(0, 1), T.Normalize(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(ours, tv(x)[0], rtol=0, atol=1e-5)
    # Already 224 px: resize and crop are the identity on both paths; only PIL's uint8 remains.
    small = Image.fromarray(array).resize((224, 224), Image.BICUBIC)
    ours = image_reward_preprocess(torch.from_numpy(np.array(small)).permute(2, 0, 1)[None] / 255)
    torch.testing.assert_close(ours[0], _release_transform(small), rtol=0, atol=1e-6)


def test_missing_files_name_the_file_and_source(tmp_path, root) -> None:
    import shutil

    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)ImageReward.*ImageReward.pt.*med_config.json.*THUDM/ImageReward'):
        ImageReward(root=str(tmp_path), vision_config=VISION)
    shutil.copytree(osp.join(root, 'ImageReward'), tmp_path / 'ImageReward')
    (tmp_path / 'ImageReward' / 'med_config.json').unlink()
    with pytest.raises(MissingRewardWeightsError, match='(?s)med_config.json.*THUDM/ImageReward'):
        ImageReward(root=str(tmp_path), vision_config=VISION)
    shutil.copy(osp.join(root, 'ImageReward', 'med_config.json'), tmp_path / 'ImageReward')
    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)bert-base-uncased.*vocab.txt.*bert-base-uncased'):
        ImageReward(root=str(tmp_path), vision_config=VISION)


@pytest.mark.parametrize('change, expected', [
    ('drop', r"missing \['blip\.text_encoder\.encoder\.layer\.1\.crossattention\.self\.key"
             r"\.weight'\]"),
    ('rename', r"(?s)missing \['blip\.visual_encoder\.blocks\.0\.attn\.qkv\.weight'\].*"
               r"unexpected \['blip\.visual_encoder\.blocks\.0\.attn\.qkv_w'\]"),
    ('shape', r"wrong shape \['mlp\.layers\.0\.weight \(1024, 16\) vs \(1024, 32\)'\]"),
    ('not a dict', 'expected a flat state dict'),
])
def test_wrong_checkpoint_names_the_keys(tmp_path, root, change: str, expected: str) -> None:
    import shutil

    sd = _release_state_dict()
    if change == 'drop':
        del sd['blip.text_encoder.encoder.layer.1.crossattention.self.key.weight']
    elif change == 'rename':
        sd['blip.visual_encoder.blocks.0.attn.qkv_w'] = sd.pop(
            'blip.visual_encoder.blocks.0.attn.qkv.weight')
    elif change == 'shape':
        sd['mlp.layers.0.weight'] = sd['mlp.layers.0.weight'][:, :16]
    else:
        sd = [sd]  # type: ignore[assignment]
    _write_release_folder(str(tmp_path), sd)
    shutil.copytree(osp.join(root, 'bert-base-uncased'), tmp_path / 'bert-base-uncased')
    with pytest.raises(ValueError, match=expected):
        ImageReward(root=str(tmp_path), vision_config=VISION)


def test_bad_arguments(root, scorer) -> None:
    with pytest.raises(ValueError, match="unknown vision_config keys \\['width'\\]"):
        ImageReward(root=root, vision_config={'width': 32})
    with pytest.raises(ValueError, match='one text prompt per image'):
        scorer(_photos()[:2], ['only one'])
    with pytest.raises(ValueError, match=r'expected images \(B, 3, H, W\)'):
        scorer(torch.rand(2, 64, 64), ['a', 'b'])


# --- the release's own code, when its source is at hand ----------------------------------------

def _exec_release_module(path: str, replacements: list[tuple[str, str]]) -> types.ModuleType:
    """Execute a release source file with the given import fixes (regex -> replacement)."""
    with open(path) as f:
        src = f.read()
    for pattern, repl in replacements:
        src, n = re.subn(pattern, repl, src, flags=re.S)
        assert n, f'{path}: {pattern!r} not found'
    module = types.ModuleType(osp.splitext(osp.basename(path))[0])
    exec(compile(src, path, 'exec'), module.__dict__)
    return module


def _release_modules(src: str) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    blip = osp.join(src, 'ImageReward', 'models', 'BLIP')
    # vit.py: fairscale only wraps blocks for gradient checkpointing, which is off.
    vit = _exec_release_module(osp.join(blip, 'vit.py'), [
        (r'from fairscale[^\n]*\n', 'checkpoint_wrapper = None\n')])
    # med.py (transformers 4.15 API): moved imports, post_init, and two helpers of the old
    # ModuleUtilsMixin, reproduced from transformers 4.x.
    med = _exec_release_module(osp.join(blip, 'med.py'), [
        (r'from transformers\.file_utils import', 'from transformers.utils import'),
        (r'from transformers\.modeling_utils import \(.*?\)',
         'from transformers.modeling_utils import PreTrainedModel\n'
         'from transformers.pytorch_utils import apply_chunking_to_forward, prune_linear_layer'),
        (r'self\.init_weights\(\)', 'self.post_init()')])
    med.BertModel.invert_attention_mask = lambda self, m: (
        (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min)
    med.BertModel.get_head_mask = lambda self, head_mask, n: [None] * n
    release = _exec_release_module(osp.join(src, 'ImageReward', 'ImageReward.py'), [
        (r'from \.models\.BLIP\.blip_pretrain import BLIP_Pretrain\n', '')])
    return vit, med, release


def test_matches_the_release_code(root, scorer) -> None:
    """The release's vit.py / med.py / ImageReward.score_gard and .score on the same checkpoint."""
    src = os.environ.get('IMAGE_REWARD_SRC')
    if not src or not osp.isfile(osp.join(src, 'ImageReward', 'ImageReward.py')):
        pytest.skip('set IMAGE_REWARD_SRC to the unpacked image-reward==1.5 wheel (pip download '
                    'image-reward==1.5 --no-deps && unzip) to compare with the release code')
    vit, med, release = _release_modules(src)
    from transformers import BertTokenizer

    med_config = osp.join(root, 'ImageReward', 'med_config.json')

    class TinyBLIP(nn.Module):
        """BLIP_Pretrain's parts at tiny size (its constructor hard-codes ViT-L and the hub)."""

        def __init__(self, med_config: str, **_) -> None:
            super().__init__()
            self.visual_encoder = vit.VisionTransformer(
                img_size=224, patch_size=VISION['patch_size'], embed_dim=VISION['hidden_size'],
                depth=VISION['num_hidden_layers'], num_heads=VISION['num_attention_heads'],
                mlp_ratio=VISION['intermediate_size'] / VISION['hidden_size'])
            cfg = med.BertConfig.from_json_file(med_config)
            cfg.encoder_width = VISION['hidden_size']
            self.text_encoder = med.BertModel(config=cfg, add_pooling_layer=False)
            self.vision_proj = nn.Linear(VISION['hidden_size'], 256)
            self.text_proj = nn.Linear(MED['hidden_size'], 256)
            self.tokenizer = BertTokenizer.from_pretrained(osp.join(root, 'bert-base-uncased'))
            self.tokenizer.add_special_tokens({'bos_token': '[DEC]'})
            self.tokenizer.add_special_tokens({'additional_special_tokens': ['[ENC]']})

    release.BLIP_Pretrain = TinyBLIP
    model = release.ImageReward(med_config=med_config, device='cpu')
    model.mlp = release.MLP(MED['hidden_size'])  # the release hard-codes 768
    sd = torch.load(osp.join(root, 'ImageReward', 'ImageReward.pt'), weights_only=True)
    model.load_state_dict(sd, strict=True)  # every release key name, exactly
    model.eval()

    images = _photos()
    tokens = _reference_tokens(root, PROMPTS)
    with torch.no_grad():
        ref = model.score_gard(tokens['input_ids'], tokens['attention_mask'],
                               image_reward_preprocess(images)).squeeze(-1)
        torch.testing.assert_close(scorer(images, PROMPTS), ref, rtol=1e-5, atol=1e-5)
        # End to end on PIL images through the release's own preprocessing and tokenizer.
        from PIL import Image

        uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pil_scores = torch.tensor([model.score(p, Image.fromarray(u))
                                   for p, u in zip(PROMPTS, uint8, strict=True)])
    # Random weights amplify the preprocessing differences (see the parity test); they stay small.
    torch.testing.assert_close(scorer(images, PROMPTS), pil_scores, rtol=0, atol=0.05)
