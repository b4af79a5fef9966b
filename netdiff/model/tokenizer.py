"""A tokenizer that needs no download: byte-pair encoding trained on the captions.

Trained with the ``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast`` (saves and
loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``). BPE rather than a word list:
the initial alphabet holds every character a class name may use, so a class first seen at
fine-tuning time still tokenizes into known pieces instead of ``[UNK]``; the training classes
become whole tokens.
"""
from __future__ import annotations

import string

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
ALPHABET = list(string.ascii_lowercase + string.digits + "_-.,:/+")


def train_caption_tokenizer(captions: list[str], vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=ALPHABET, show_progress=False)
    # Sorted and de-duplicated: the vocabulary must not depend on the order images were found.
    tok.train_from_iterator(sorted(set(captions)), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer vocabulary {tok.get_vocab_size()} exceeds text.vocab_size {vocab_size}")
    bos, eos = tok.token_to_id("[BOS]"), tok.token_to_id("[EOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, pad_token="[PAD]", unk_token="[UNK]",
        bos_token="[BOS]", eos_token="[EOS]")


def tokenize(tokenizer, captions: list[str]):
    """(B, max_length) input ids, padded and truncated the way CLIP's pipelines do it."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids
