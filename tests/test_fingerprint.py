"""The model fingerprint (scheme 2) and the sink rule: what changes decoding changes the
fingerprint, what does not leaves it alone, and the sink is the one docs/format.md states."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from vecarc import fingerprint as fp
from vecarc.errors import VecarcError
from vecarc.format import container
from vecarc.models import choose_sink, load_model
from vecarc.tiny import build_tiny_model

DOC = (Path(__file__).parents[1] / "docs" / "format.md").read_text()


def test_the_documented_test_vector():
    tensors = [("model.embed.weight", "F32", (2,), struct.pack("<2f", 1.0, -2.0)),
               ("lm_head.bias", "F16", (1,), bytes.fromhex("0038"))]
    config = {"hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 10000.0,
                                                                                 "rope_type": "default"}}
    special = {"bos": 0, "eos": 0, "unk": None, "pad": None, "added": [], "sink": 0}
    got = fp.digest(tensors, fp._normal(config), {"model": {"type": "BPE", "vocab": {"a": 0, "é": 1}}}, special)
    documented = re.search(r"Fingerprint:\s*`(fp2:[0-9a-f]{64})`", DOC).group(1)
    assert got == documented
    assert fp.canonical_json(fp._normal(config)).decode() in DOC  # the entries as the page prints them


def test_the_version_4_dictionary_is_version_3s_with_the_new_fingerprint():
    v3 = (container.DICT_DIR / "header-dict-v3.json").read_text()
    v4 = (container.DICT_DIR / "header-dict-v4.json").read_text()
    new = re.search(r"The default model's is `(fp2:[0-9a-f]{64})`", DOC).group(1)
    assert v4 == v3.replace("sha256:b945dc0ba9b0f6cf7b51b3c410736463c40df469efe54bddeeba504df78db7e2", new) != v3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("fp") / "m")
    return load_model(str(folder), "cpu")


@pytest.mark.parametrize("field, value", [
    ("rope_parameters", {"rope_theta": 500000.0, "rope_type": "default"}),
    ("rope_parameters", {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 2.0,
                         "original_max_position_embeddings": 128}),
    ("hidden_act", "gelu"), ("rms_norm_eps", 1e-5), ("attention_bias", True), ("max_position_embeddings", 512),
])
def test_each_decoding_field_of_the_config_changes_it(tiny, monkeypatch, field, value):
    before = fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id)
    monkeypatch.setattr(tiny.model.config, field, value)
    assert fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id) != before


@pytest.mark.parametrize("field, value", [
    ("transformers_version", "9.9.9"), ("_name_or_path", "/elsewhere"), ("use_cache", False),
    ("attention_dropout", 0.3), ("architectures", ["Other"]), ("eos_token_id", 7),
])
def test_informational_fields_leave_it_alone(tiny, monkeypatch, field, value):
    before = fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id)
    monkeypatch.setattr(tiny.model.config, field, value)
    assert fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id) == before


def test_weights_and_the_sink_change_it(tiny):
    import torch

    before = fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id)
    assert fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id + 1) != before
    w = tiny.model.get_input_embeddings().weight
    with torch.no_grad():
        w[0, 0] += 1e-3
    try:
        assert fp.fingerprint(tiny.model, tiny.tokenizer, tiny.sink_id) != before
    finally:
        with torch.no_grad():
            w[0, 0] -= 1e-3


def test_another_eos_in_tokenizer_config_changes_it(tmp_path):
    import json
    import shutil

    folder = build_tiny_model(tmp_path / "a")
    before = load_model(str(folder), "cpu").fingerprint
    other = shutil.copytree(folder, tmp_path / "b")
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    tok = load_model(str(folder), "cpu").tokenizer
    cfg["eos_token"] = tok.convert_ids_to_tokens(5)  # an ordinary token, now also the EOS
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    lm = load_model(str(other), "cpu")
    assert lm.tokenizer.eos_token_id == 5 and lm.fingerprint != before


def test_recorded_fingerprints_name_their_scheme(tiny):
    assert tiny.fingerprint.startswith("fp2:") and fp.scheme_of(tiny.fingerprint) == "fp2"
    assert fp.scheme_of(tiny.fingerprint_as("sha256")) == "sha256"
    for junk in ("md5:" + "0" * 64, "fp2:" + "0" * 63, "fp2:" + "G" * 64):
        with pytest.raises(VecarcError, match="unknown model fingerprint"):
            fp.scheme_of(junk)


def _tokenizer(bos: str | None, eos: str | None, prepend: bool = False, specials=("<s>", "</s>", "<x>")):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials, "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[-1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if prepend:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    kw = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


@pytest.mark.parametrize("bos, eos, prepend, want", [
    ("<s>", None, True, 0),      # BOS only, put before every text
    ("<s>", None, False, 0),     # BOS only, declared
    (None, "</s>", False, 1),    # EOS only
    ("<s>", "</s>", False, 0),   # both: BOS first
    ("<x>", "</s>", True, 2),    # the prepended token wins over a name
])
def test_the_sink_rule(bos, eos, prepend, want):
    assert choose_sink(_tokenizer(bos, eos, prepend), 6, "m") == want


def test_a_tokenizer_with_neither_bos_nor_eos_is_refused():
    with pytest.raises(VecarcError, match="names no BOS or EOS token"):
        choose_sink(_tokenizer(None, None), 6, "m")


def test_a_sink_outside_the_embedding_is_refused():
    # transformers adds a named token the vocabulary lacks after its last id: here 6, of 6 rows
    with pytest.raises(VecarcError, match=r"sink token \(id 6\) is not a row of its 6-row input embedding"):
        choose_sink(_tokenizer(None, "<new>"), 6, "m")


def test_a_tokenizer_larger_than_the_embedding_is_refused_at_load(tmp_path):
    from transformers import AutoTokenizer

    folder = build_tiny_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(["<|not-in-the-model|>"])  # the id past the last embedding row
    tok.save_pretrained(folder)
    with pytest.raises(VecarcError, match=r"its tokenizer has \d+ tokens but its input embedding only \d+ rows"):
        load_model(str(folder), "cpu")


def test_fingerprint_memo_follows_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VECARC_CACHE", str(tmp_path / "cache"))
    folder = build_tiny_model(tmp_path / "m")
    first = load_model(str(folder), "cpu").fingerprint
    assert list((tmp_path / "cache" / "fingerprints").iterdir())
    assert load_model(str(folder), "cpu").fingerprint == first
    build_tiny_model(folder, seed=5)  # other weights in the same folder
    assert load_model(str(folder), "cpu").fingerprint != first


def test_the_fingerprint_memo_sees_an_edit_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("VECARC_CACHE", str(tmp_path / "cache"))
    folder = build_tiny_model(tmp_path / "m")
    first = load_model(str(folder), "cpu").fingerprint
    weights = folder / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-2] ^= 1  # a low mantissa bit of the last weight: same size, another model
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert load_model(str(folder), "cpu").fingerprint != first


def test_text_the_tokenizer_cannot_give_back_is_kept_and_said(tmp_path, monkeypatch):
    import vecarc

    folder = build_tiny_model(tmp_path / "w", tokenizer="wordpiece")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.txt").write_text("two  spaces")
    warnings = []
    r = vecarc.pack(["two.txt"], "t.vec", model=load_model(str(folder), "cpu"), warn=warnings.append)
    assert r.untokenizable == ["two.txt"] and [d.encoding for d in r.archive.documents] == ["bytes"]
    assert warnings == ["1 text document(s) kept as literal bytes: the model's tokenizer does not give their text "
                        "back exactly (two.txt)"]
