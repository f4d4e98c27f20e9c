"""A tiny Llama with a small tokenizer (byte-level BPE unless asked), built and saved locally.

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


TOKENIZERS = ("bpe", "sentencepiece", "unigram", "wordpiece")


def build_tokenizer(kind: str = "bpe"):
    """A small fast tokenizer of one of the shapes real models use, trained on TRAIN_TEXT.

    bpe: byte-level BPE, one <|endoftext|> as BOS and EOS (GPT-2, SmolLM2). sentencepiece:
    BPE on Metaspace with byte fallback, <s> put before every text (Llama 2, Mistral).
    unigram: Metaspace Unigram with only an EOS (T5-like). wordpiece: BERT-style, with
    [CLS] put before every text; it does not give back spaces exactly, so vecarc keeps
    texts it cannot reproduce as literals.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator([TRAIN_TEXT], trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if kind in ("sentencepiece", "unigram"):
        sp = kind == "sentencepiece"
        specials = ["<unk>", "<s>", "</s>"] if sp else ["<pad>", "</s>", "<unk>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True) if sp else models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="first")]) \
            if sp else decoders.Metaspace(prepend_scheme="first")
        bytes_ = [f"<0x{b:02X}>" for b in range(256)] if sp else []
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials + bytes_) if sp else \
            trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator([TRAIN_TEXT], trainer)
        if sp:
            tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
            return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                           unk_token="<unk>")
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>")
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator([TRAIN_TEXT], trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", eos_token="[SEP]")
    raise ValueError(f"unknown tokenizer kind {kind!r}: one of {', '.join(TOKENIZERS)}")


def train(model, tokenizer, steps: int, seed: int = 0) -> None:
    """A few AdamW steps on TRAIN_TEXT, so cross-entropy differs between texts as in a real model."""
    ids = torch.tensor(tokenizer(TRAIN_TEXT, add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=g)
        batch = torch.stack([ids[s : s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


FAMILIES = ("llama", "mistral", "qwen2")


def build_tiny_model(folder: Path, seed: int = 0, hidden: int = 64, train_steps: int = 0,
                     tokenizer: str = "bpe", family: str = "llama", **config) -> Path:
    """A two-layer model of a Llama-style family (Mistral: a sliding window; Qwen2: q, k, v biases);
    `config` overrides the family's configuration (rope_scaling, say)."""
    import transformers

    kinds = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
    fast = build_tokenizer(tokenizer)
    torch.manual_seed(seed)
    cfg = getattr(transformers, kinds[family] + "Config")(**{
        "vocab_size": len(fast), "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "tie_word_embeddings": True, **config})
    model = getattr(transformers, kinds[family] + "ForCausalLM")(cfg)
    if family == "qwen2":  # biases that are not zero, so that the integer path's are exercised
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.1)
    if train_steps:
        train(model, fast, train_steps, seed)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
