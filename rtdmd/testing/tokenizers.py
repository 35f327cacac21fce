"""Offline tokenizers of the real classes over tiny vocabularies (no download, no sentencepiece).

They pad and truncate like the real ones (CLIP to 77 tokens, T5 and Qwen to the requested
``max_length``), so a pipeline's prompt encoding produces tensors of the real shapes; only the
token ids differ. The memory planner saves them into its weightless snapshots.
"""

from __future__ import annotations

import string

from .flux2 import qwen_tokenizer

_WORDS = ('a', 'an', 'the', 'photo', 'of', 'cat', 'dog', 'red', 'blue', 'car', 'on', 'in',
          'and', 'with', 'two', 'green', 'apple', 'table', 'sitting', 'next', 'to')


def clip_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` (byte-pair over letters and one merge chain), padding with its end
    token as CLIP-L's does."""
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase)
    vocab: dict[str, int] = {}
    for token in ['<|startoftext|>', '<|endoftext|>', '!', *letters,
                  *(c + '</w>' for c in letters), 'th', 'the</w>']:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[('t', 'h'), ('th', 'e</w>')],
                         pad_token='<|endoftext|>', model_max_length=model_max_length)


def t5_tokenizer():
    """A T5 Unigram tokenizer over letters and a few words."""
    from transformers import T5Tokenizer

    pieces = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('\u2581', -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase]
    pieces += [('\u2581' + w, -1.0) for w in _WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


#: Builders by the tokenizer class a ``model_index.json`` names.
OFFLINE_TOKENIZERS = {
    'CLIPTokenizer': clip_tokenizer,
    'CLIPTokenizerFast': clip_tokenizer,
    'T5Tokenizer': t5_tokenizer,
    'T5TokenizerFast': t5_tokenizer,
    'Qwen2Tokenizer': qwen_tokenizer,
    'Qwen2TokenizerFast': qwen_tokenizer,
}

__all__ = ['OFFLINE_TOKENIZERS', 'clip_tokenizer', 'qwen_tokenizer', 't5_tokenizer']
