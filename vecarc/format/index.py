"""The volume index: one small file naming the archives (volumes) a large pack was cut into.

A pack larger than its volume size becomes several ordinary archives, packed and checked
one after another so that memory follows the volume, not the corpus, plus this index
(docs/format.md, "Volume index"): which volume files, with their sizes and SHA-256s, and
each document's parts in order. A reader checks everything here before opening a volume.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import VecarcError
from . import strict
from .header import _hex, _int
from .names import check_names

MAGIC = b"\x89VEI\r\n\x1a\n"
VERSION = 1
PREFIX = struct.Struct("<8sHHI")  # magic, version, flags, json_len
MAX_JSON = 64 << 20
MAX_VOLUMES = 1 << 20


def bad(msg: str) -> VecarcError:
    return VecarcError(f"corrupt volume index: {msg}")


@dataclass
class Volume:
    file: str  # a plain file name, in the index's folder
    size: int  # bytes of the volume file
    sha256: str  # of the whole volume file


@dataclass
class Part:
    volume: int  # index into Index.volumes
    size: int  # bytes of the document this volume holds, under the document's name


@dataclass
class IndexDocument:
    name: str
    size: int
    sha256: str
    parts: list[Part]


@dataclass
class Index:
    volumes: list[Volume]
    documents: list[IndexDocument]

    def to_bytes(self) -> bytes:
        doc = {"format": "vecarc-index",
               "volumes": [{"file": v.file, "size": v.size, "sha256": v.sha256} for v in self.volumes],
               "documents": [{"name": d.name, "size": d.size, "sha256": d.sha256,
                              "parts": [[p.volume, p.size] for p in d.parts]} for d in self.documents]}
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        head = PREFIX.pack(MAGIC, VERSION, 0, len(text)) + text
        return head + hashlib.sha256(head).digest()


def is_index(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_index(path: str | Path) -> Index:
    """Parse and check an index; sizes are checked before anything is read or allocated."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(PREFIX.size)
            if len(head) < PREFIX.size:
                raise bad("shorter than its prefix")
            magic, version, flags, n = PREFIX.unpack(head)
            if magic != MAGIC:
                raise bad("wrong magic")
            if version != VERSION:
                raise VecarcError(f"unsupported volume index version {version} (this vecarc reads {VERSION})")
            if flags or n > MAX_JSON or size != PREFIX.size + n + 32:
                raise bad("bad flags or length")
            rest = f.read(n + 32)
    except OSError as e:
        raise VecarcError(f"cannot read {p}: {e.strerror}") from None
    if hashlib.sha256(head + rest[:n]).digest() != rest[n:]:
        raise bad("checksum mismatch")
    return _parse(strict.loads(rest[:n], bad))


def _parse(raw) -> Index:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise bad(msg)

    need(isinstance(raw, dict) and raw.get("format") == "vecarc-index", "not a vecarc index")
    vols, docs = raw.get("volumes"), raw.get("documents")
    need(isinstance(vols, list) and 1 <= len(vols) <= MAX_VOLUMES and isinstance(docs, list), "no volumes")
    volumes = []
    for v in vols:
        need(isinstance(v, dict) and isinstance(v.get("file"), str) and _int(v.get("size"), 1, 1 << 62)
             and _hex(v.get("sha256"), 64), "bad volume entry")
        f = v["file"]
        need(f not in ("", ".", "..") and "/" not in f and "\\" not in f and "\0" not in f
             and len(f.encode()) <= 255, f"volume file name {f[:40]!r} is not a plain name")
        volumes.append(Volume(f, v["size"], v["sha256"]))
    need(len({v.file for v in volumes}) == len(volumes), "a volume file is named twice")
    documents, used = [], set()
    for d in docs:
        need(isinstance(d, dict) and isinstance(d.get("name"), str) and _int(d.get("size"), 0, 1 << 62)
             and _hex(d.get("sha256"), 64) and isinstance(d.get("parts"), list) and d["parts"], "bad document entry")
        parts, last = [], -1
        for q in d["parts"]:
            need(isinstance(q, list) and len(q) == 2 and _int(q[0], 0, len(volumes) - 1)
                 and _int(q[1], 0, 1 << 62) and q[0] > last, "bad document part")
            parts.append(Part(q[0], q[1]))
            last = q[0]
            used.add(q[0])
        need(sum(p.size for p in parts) == d["size"], f"{d['name']}: the parts do not add up to its size")
        documents.append(IndexDocument(d["name"], d["size"], d["sha256"], parts))
    check_names([d.name for d in documents])
    need(used == set(range(len(volumes))), "a volume holds no document")
    return Index(volumes, documents)
