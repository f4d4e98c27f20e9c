"""Small hostile archives must not cost gigabytes or hours: each class of bomb, crafted by hand.

Every archive here carries a valid checksum, so only the reader's later checks can stop it.
Each test also runs `vecarc info` (and `verify` where it reaches the model) in a child process
on its worst archive and prints its time and peak RSS (pytest -s shows them).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from helpers import resealed

import vecarc
from vecarc import VecarcError
from vecarc.format import (
    PREFIX,
    Archive,
    Chunk,
    Document,
    Header,
    ModelRecord,
    VectorsRecord,
    parse_archive,
    serialize,
)
from vecarc.format.container import CHECKSUM_LEN, encode_tokens


@pytest.fixture(scope="module")
def good(two_docs) -> bytes:
    return two_docs


def _split(data: bytes) -> tuple[int, bytes, bytes]:
    """(plain header length, header frame, body) of an archive."""
    _, _, _, zlen, hlen, _, _ = PREFIX.unpack(data[: PREFIX.size])
    return hlen, data[PREFIX.size : PREFIX.size + zlen], data[PREFIX.size + zlen : len(data) - CHECKSUM_LEN]


def _seal(hlen: int, frame: bytes, body: bytes) -> bytes:
    head = PREFIX.pack(b"\x89VEC\r\n\x1a\n", 2, 0, len(frame), hlen, 0, len(body))
    return head + frame + body + hashlib.sha256(head + frame + body).digest()


def _declare(frame: bytes, size: int) -> bytes:
    """The same zstd frame with another content size in its header (an 8-byte field)."""
    fhd = frame[4]
    assert fhd >> 5 & 1 and not fhd & 3, "a single-segment frame without a dictionary id"
    fcs = {0: 1, 1: 2, 2: 4, 3: 8}[fhd >> 6]
    return frame[:4] + bytes([0b11100000 | fhd & 0b100]) + size.to_bytes(8, "little") + frame[5 + fcs :]


# Runs the CLI and, at exit, prints its own peak RSS (VmHWM belongs to the process's own memory map:
# unlike ru_maxrss it does not count the pages a fork shared with this large test process).
_PEAK = ("import atexit, runpy, sys\n"
         "def peak():\n"
         "    for line in open('/proc/self/status'):\n"
         "        if line.startswith('VmHWM:'):\n"
         "            print('peak-rss-kib', line.split()[1], file=sys.stderr)\n"
         "atexit.register(peak)\n"
         "sys.argv = ['vecarc', *sys.argv[1:]]\n"
         "runpy.run_module('vecarc.cli', run_name='__main__')\n")


def _measure(tmp: Path, data: bytes, *commands: str, model: Path | None = None) -> dict:
    """Run `vecarc COMMAND` on the archive in a child process: exit code, seconds, peak RSS in MiB."""
    path = tmp / "hostile.vec"
    path.write_bytes(data)
    out = {}
    for cmd in commands:
        extra = ["--model", str(model)] if model is not None and cmd == "verify" else []
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _PEAK, cmd, str(path), *extra], capture_output=True, text=True,
                           timeout=300)
        lines = r.stderr.strip().splitlines()
        peak = next((int(x.split()[1]) for x in lines if x.startswith("peak-rss-kib")), 0)
        out[cmd] = {"rc": r.returncode, "s": round(time.perf_counter() - t, 2), "rss_mib": round(peak / 1024),
                    "err": next((x for x in lines if not x.startswith("peak-rss-kib")), "")}
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
        assert peak < 1 << 20, f"{cmd} peaked at {peak} KiB"
    print(f"\n{tmp.name}: {json.dumps(out)}")
    return out


def test_a_header_frame_that_declares_gigabytes_is_refused_unread(tmp_path, good):
    hlen, frame, body = _split(good)
    bomb = _seal(hlen, _declare(frame, 3 << 30), body)
    with pytest.raises(VecarcError, match="header does not decode.*declares 3221225472 bytes"):
        parse_archive(bomb)
    m = _measure(tmp_path, bomb, "info")
    assert m["info"]["rc"] == 2 and m["info"]["s"] < 30


def test_literal_frames_are_read_within_their_declared_size(good):
    from vecarc.format.container import decode_tokens, literal_bytes

    frame = encode_tokens([1, 2, 3])
    with pytest.raises(VecarcError, match="declares 4294967296 bytes where 12 were declared"):
        decode_tokens(_declare(frame, 1 << 32), 3, 100)
    # A frame that does not say its size but holds more than declared: read as a bounded stream.
    big = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    with pytest.raises(VecarcError, match="it holds more than 12 bytes where 12 were declared"):
        decode_tokens(big, 3, 100)
    a = parse_archive(good)
    i = next(i for i, c in enumerate(a.chunks) if c.kind == "bytes")
    a.literals[i] = big
    with pytest.raises(VecarcError, match="it holds more than 256 bytes where 256 were declared"):
        literal_bytes(a, i)
    with pytest.raises(VecarcError, match="token id 4294967295 is not in the model's 100"):
        decode_tokens(encode_tokens([1, 2**32 - 1]), 2, 100)


def _archive(model: ModelRecord, vectors: VectorsRecord, docs, chunks, stored=None, literals=None) -> bytes:
    h = Header(model=model, vectors=vectors, documents=docs, chunks=chunks, cram={"margin": 0.5})
    return serialize(Archive(header=h, stored=stored, literals=literals or {}))


def _on_grid(n: int):
    """n rank-2 int8 vectors of random values (so the section does not compress away)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ints = torch.stack([torch.full((n,), 127), torch.randint(-127, 128, (n,), generator=g)], -1)
    return (ints * 2.0 ** -torch.randint(0, 16, (n, 1), generator=g)).float()[:, None, :]


def _model(hidden: int) -> ModelRecord:
    return ModelRecord("m", "path:/m", "fp2:" + "0" * 64, "float32", hidden, 1000, 0)


def test_low_rank_vectors_that_would_expand_far_beyond_the_file_are_refused(tmp_path):

    n = 2000  # rank-2 int8 coordinates: 4 bytes each, expanding to 256 KiB each at hidden size 65,536
    stored = _on_grid(n)
    docs = [Document("a.txt", n, "0" * 64, "text")]
    chunks = [Chunk(0, "vector", 1, "0" * 8, row=i) for i in range(n)]
    bomb = _archive(_model(65536), VectorsRecord(1, "int8", 65536, n, 2, 0), docs, chunks, stored)
    assert len(bomb) < 16 << 10
    with pytest.raises(VecarcError, match="vectors would expand to 524288000 bytes"):
        parse_archive(bomb)
    m = _measure(tmp_path, bomb, "info", "verify")
    assert all(r["rc"] == 2 and r["s"] < 30 for r in m.values())


def test_a_header_that_expands_to_megabytes_of_json_is_refused(tmp_path, good):
    def swell(h):  # 400,000 copies of one document: a few KiB compressed, ~40 MiB of JSON
        h["documents"] = [dict(h["documents"][0], name=f"d{i}") for i in range(400_000)]

    bomb = resealed(good, swell)
    assert len(bomb) < 2 << 20
    t = time.perf_counter()
    with pytest.raises(VecarcError, match="header size out of range"):
        parse_archive(bomb)
    assert time.perf_counter() - t < 1
    m = _measure(tmp_path, bomb, "info")
    assert m["info"]["rc"] == 2


def test_many_documents_cost_linear_time(tmp_path):
    n = 20_000  # one literal token block each: a few hundred KiB; summary and decoding were once quadratic
    docs = [Document(f"d{i}.txt", 1, "0" * 64, "text") for i in range(n)]
    chunks = [Chunk(i, "tokens", 1, "0" * 8) for i in range(n)]
    frame = encode_tokens([5])
    data = _archive(_model(64), VectorsRecord(1, "int8", 64, 0), docs, chunks, literals=dict.fromkeys(range(n), frame))
    t = time.perf_counter()
    s = vecarc.summary(parse_archive(data))
    assert len(s["documents"]) == n and time.perf_counter() - t < 10
    m = _measure(tmp_path, data, "info")
    assert m["info"]["rc"] == 0 and m["info"]["s"] < 60


def test_more_greedy_steps_than_the_vectors_can_justify_are_refused(tmp_path, tiny_dir):

    n = 64  # rank-2 vectors, each claiming 8,190 tokens: a few hundred bytes asking for hours of decoding
    docs = [Document("a.txt", 10**6, "0" * 64, "text")]
    chunks = [Chunk(0, "vector", 8190, "0" * 8, row=i) for i in range(n)]
    data = _archive(_model(576), VectorsRecord(1, "int8", 576, n, 2, 0), docs, chunks, _on_grid(n))
    assert len(data) < 2048
    with pytest.raises(VecarcError, match=r"524160 tokens to decode declared for \d+ bytes of vectors and corrections"):
        parse_archive(data)
    m = _measure(tmp_path, data, "info", "verify", model=tiny_dir)
    assert all(r["rc"] == 2 and r["s"] < 30 for r in m.values())


def test_a_header_at_odds_with_the_model_is_refused_before_decoding(tmp_path, good, tiny_dir):
    def smaller(h):
        h["model"]["vocab_size"] = 300

    m = _measure(tmp_path, resealed(good, smaller), "verify", model=tiny_dir)
    assert m["verify"]["rc"] == 2 and "declares a model 64 wide with 300 tokens" in m["verify"]["err"]
