"""A tiny Llama with a byte-level BPE tokenizer, built and saved locally.

Tests and benchmarks load it through vecarc's real loading code, so they run
where no model hub can be reached. Trained for a few seconds on TRAIN_TEXT, it
finds some texts easy and others hard, as a real model does.
"""

from __future__ import annotations

from pathlib import Path

import torch

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "To be or not to be, that is the question. Café, naïve, résumé — unicode text 🎉 and tabs\tand\nnewlines.\n"
) * 20


def build_tiny_model(folder: Path, seed: int = 0, hidden: int = 64, train_steps: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    if train_steps:  # a model that knows TRAIN_TEXT, so cross-entropy differs between texts
        ids = torch.tensor(fast(TRAIN_TEXT)["input_ids"])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(train_steps):
            starts = torch.randint(0, len(ids) - 65, (16,), generator=g)
            batch = torch.stack([ids[s : s + 64] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
