"""Shared fixtures: a tiny Llama with a byte-level BPE tokenizer, built and saved
locally, then loaded through vecarc's real loading code."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def reseal(good: bytes, header) -> bytes:
    """The good archive's body, byte for byte, under another header, with a valid checksum:
    only header validation can stop it."""
    import hashlib
    import json

    from vecarc.archive import CHECKSUM_LEN, MAGIC, PREFIX, compress_header

    _, version, flags, zlen, _, reserved, body_len = PREFIX.unpack(good[: PREFIX.size])
    body = good[PREFIX.size + zlen : len(good) - CHECKSUM_LEN]
    header = json.loads(json.dumps(header, allow_nan=True))
    for ch in header.get("chunks", []) if isinstance(header, dict) and isinstance(header.get("chunks"), list) else []:
        if isinstance(ch, dict) and ch.get("kind") == "vector":
            ch.pop("index", None)  # the reader's annotation, not stored
    text = json.dumps(header, allow_nan=True).encode()
    z = compress_header(text)
    head = PREFIX.pack(MAGIC, version, flags, len(z), len(text), reserved, body_len)
    return head + z + body + hashlib.sha256(head + z + body).digest()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def other_tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny2"), seed=1)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("trained"), seed=2, train_steps=150)


@pytest.fixture(scope="session")
def trained_tiny(trained_dir):
    from vecarc.models import load_model

    return load_model(str(trained_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from vecarc.models import load_model

    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Real-model tests share one conversion; everything else must not touch ~/.cache.
    import os

    if "VECARC_CACHE" not in os.environ:
        monkeypatch.setenv("VECARC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
