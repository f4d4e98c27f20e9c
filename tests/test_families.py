"""Tiny models of several families, built locally and loaded through the real loading code:
pack, verify --strict and unpack must give the bytes back on each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import FAST

import vecarc
from vecarc.format import read_archive
from vecarc.tiny import build_tiny_model, train

TEXT = b"Tiny models of every family pack this sentence, and give it back byte for byte."
TRAIN_STEPS = 40  # about a second each: enough that the models' predictions are no longer uniform


def _config(family: str, vocab: int):
    import transformers as T

    common = dict(vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=True)
    attn = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return {
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=2, n_head=4),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common, **attn),
        "qwen2": lambda: T.Qwen2Config(**common, **attn, num_key_value_heads=2),
        "gemma": lambda: T.GemmaConfig(**common, **attn, num_key_value_heads=2, head_dim=16),
        "phi3": lambda: T.Phi3Config(**common, **attn, num_key_value_heads=2, pad_token_id=0),
    }[family]()


def _build(folder: Path, family: str) -> Path:
    """The tiny Llama's tokenizer with a model of another family, trained for a moment."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    build_tiny_model(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, len(tok)))
    train(model, tok, TRAIN_STEPS)
    for f in folder.iterdir():
        if f.name.startswith(("model", "config", "generation")):
            f.unlink()
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2", "gemma", "phi3"])
def test_each_family_round_trips_strictly(tmp_path, family):
    lm = vecarc.load_model(str(_build(tmp_path / family, family)), device="cpu")
    src = tmp_path / "s.txt"
    src.write_bytes(TEXT)
    vecarc.pack([src], tmp_path / "s.vec", replace(FAST, chunk_tokens=2, min_chunk_tokens=1), model=lm)
    r = vecarc.verify(tmp_path / "s.vec", model=lm, strict=True)
    assert r.ok, r.problems
    written = vecarc.unpack(tmp_path / "s.vec", tmp_path / "out", model=lm)
    assert written[0].read_bytes() == TEXT


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2", "gemma", "phi3"])
def test_each_family_decodes_predicted_chunks_with_their_corrections(tmp_path, family):
    # Untrained, these models would keep the text as a literal (its corrections cost more): drive the
    # predicted path directly, through each family's own KV cache.
    from vecarc.chunks.predicted import checked_corrections, teacher_corrections
    from vecarc.decode import greedy_decode
    from vecarc.format.corrections import full_bits
    from vecarc.text import tokenize_exact

    lm = vecarc.load_model(str(_build(tmp_path / family, family)), device="cpu")
    ids = list(tokenize_exact(lm, TEXT))
    corrections = checked_corrections(lm, [ids], teacher_corrections(lm, [ids], 0.5), 0.5)[0]
    assert corrections is not None
    assert any(b < full_bits(lm.vocab_size) for _, b, _ in corrections)  # some named by a few bits
    for rows in (1, 3):  # alone, and beside copies of itself
        got, mins = greedy_decode(lm, torch.zeros(rows, 0, lm.hidden_size), [len(ids)] * rows,
                                  corrections=[corrections] * rows)
        assert got == [ids] * rows and min(mins) >= 0.5


# Per tokenizer shape, the sink the rule picks.
SHAPES = {"sentencepiece": "<s>", "unigram": "</s>", "wordpiece": "[CLS]"}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_tokenizer_shape_round_trips_strictly(tmp_path, shape):
    from vecarc.text import tokenize_exact

    lm = vecarc.load_model(str(build_tiny_model(tmp_path / shape, tokenizer=shape, train_steps=TRAIN_STEPS)), "cpu")
    assert lm.tokenizer.convert_ids_to_tokens(lm.sink_id) == SHAPES[shape]
    src = tmp_path / "s.txt"
    src.write_bytes(TEXT)
    vecarc.pack([src], tmp_path / "s.vec", replace(FAST, chunk_tokens=2, min_chunk_tokens=1), model=lm)
    a = read_archive(tmp_path / "s.vec")
    assert a.header.model.sink_token_id == lm.sink_id and {c.kind for c in a.chunks} == {"vector"}
    r = vecarc.verify(tmp_path / "s.vec", model=lm, strict=True)
    assert r.ok, r.problems
    assert vecarc.unpack(tmp_path / "s.vec", tmp_path / "out", model=lm)[0].read_bytes() == TEXT
    if shape == "wordpiece":  # it does not give two spaces back: such a text is kept as a literal
        assert tokenize_exact(lm, b"two  spaces") is None


def test_a_model_whose_two_input_paths_differ_is_refused():
    from vecarc.errors import VecarcError
    from vecarc.models import _check_one_input_path

    class Scaled(torch.nn.Module):  # scales token ids' embeddings only, as an embedding multiplier would
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(16, 4)
            self.head = torch.nn.Linear(4, 16)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids=None, inputs_embeds=None):
            x = self.emb(input_ids) * 8 if inputs_embeds is None else inputs_embeds
            return type("Out", (), {"logits": self.head(x)})()

    with pytest.raises(VecarcError, match="logits differ by .* between token ids and the same tokens' embeddings"):
        _check_one_input_path(Scaled(), "scaled", 16)
