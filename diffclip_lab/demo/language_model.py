# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""A tiny Llama with a word-level tokenizer, made offline: the language model of the VLM demo and tests."""

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def tiny_language_model(words: list[str], hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """
    A small Llama and a word-level tokenizer over `words` (lower-cased; punctuation split off), made offline: the
    language model of the tests and the demo. Returns the model and a fast tokenizer with `<s>`, `</s>`, `<unk>`
    and `<pad>`.
    """
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocabulary = {token: index for index, token in enumerate([*specials, *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(vocabulary),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=vocabulary["<s>"],
        eos_token_id=vocabulary["</s>"],
        pad_token_id=vocabulary["<pad>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config), tokenizer


def pretrain_language_model(model, tokenizer, texts: list[str], steps: int, batch_size: int = 64, lr: float = 3e-3):
    """Next-token prediction on `texts` for `steps` steps (AdamW, one process): the tiny language model learns the
    demo's words before it learns to read images, as a real one comes pretrained."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[row] + tokenizer.eos_token for row in rows], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model
