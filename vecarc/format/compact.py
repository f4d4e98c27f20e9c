"""Formats 5 and 6: the compact container of coded archives (docs/format.md, "Formats 5 and 6").

A one-document archive of the default model named after its file spends 25 bytes on magic,
header and checks (format 6): what decoding needs (the model's identity, sizes, a 64-bit
hash per document, the name where the file's does not give it) and nothing it can derive.
Chunks follow from each document's token count and the chunk size; each is a coded stream
or a literal zstd frame of its tokens. The reader checks the CRC-32 before parsing and every
count against the bytes that remain before it allocates for it. Format 5 is read, not written.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import VecarcError
from .header import (
    CODED_TOKENS_PER_BYTE,
    MAX_CHUNK_TOKENS,
    MAX_LITERAL_TOKENS,
    Chunk,
    DecodeRecord,
    Document,
    Header,
    ModelRecord,
    VectorsRecord,
    bad,
    need,
)
from .names import check_name, check_names

MAGIC = b"\x89VC"
VERSION = 6
READS = (5, 6)
FLAG_SOURCE = 1  # a model source string follows (absent: the default model)
FLAG_CONTEXT = 2  # chunks are coded after the tokens before them: a context length follows the chunk size
FLAG_DICT = 4  # chunks are coded after a dictionary's vectors: its 8-byte id follows the model source
FLAG_PREFIX = 8  # chunks are coded after vectors the archive holds: they follow the sizes
# Format 6 only:
FLAG_DIMS = 16  # vocabulary, width and sink follow (absent: DEFAULT_DIMS, the default model's)
FLAG_CHUNK = 32  # the chunk size follows (absent: DEFAULT_CHUNK)
FLAG_NAMED_BY_FILE = 64  # one document, named after the archive's file (implied_name): no count, no name
FLAG_LAST_LITERAL = 128  # the archive's last block (which stores no length) is a literal token block
DEFAULT_DIMS = (49152, 576, 0)  # SmolLM2-135M's vocabulary, width and sink (<|endoftext|>)
DEFAULT_CHUNK = 1024  # pack's default for coded chunks (config.CODED_TOKENS)
SUFFIX = ".vec"
MAX_PREFIX = 64
MAX_CONTEXT = 4096
DEFAULT_SOURCE_MARK = "default"  # sources "default:..." are not stored: the default model, by its fingerprint
FP_BYTES = {5: 8, 6: 4}
DOC_HASH_BYTES, DICT_ID_BYTES = 8, 8
KIND_CODED, KIND_TOKENS = 0, 1
MAX_NAME = 4096


@dataclass(frozen=True)
class Prefix:
    """Vectors a coded archive holds (format 5, flag bit 3), read by every chunk after the sink and any
    dictionary's: value [i][j] is q[i d + j] x mults[i] in Q16."""

    q: bytes  # count x hidden int8, row-major
    mults: tuple[int, ...]  # per vector, 1 .. MAX_PREFIX_MULT
    hidden: int
    plain_bytes: int  # the archive's size without them, as pack measured it (informational)

    @property
    def count(self) -> int:
        return len(self.mults)

    def values(self) -> list[list[int]]:
        return [[(b - 256 if b > 127 else b) * m for b in self.q[i * self.hidden : (i + 1) * self.hidden]]
                for i, m in enumerate(self.mults)]


MAX_PREFIX_MULT = (1 << 17) - 1  # |q x mult| <= 128 (2^17 - 1) < 2^24, a dictionary's bound


def varint(n: int) -> bytes:
    """n as unsigned LEB128, the varint of format 5 and of dictionary files."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Reader:
    """Fields taken from the front of `data`, each checked before use; `fail` makes the error (default: a
    corrupt archive's)."""

    def __init__(self, data: bytes, fail: Callable[[str], VecarcError] = bad) -> None:
        self.data, self.at, self.fail = data, 0, fail

    def need(self, cond: bool, msg: str) -> None:
        if not cond:
            raise self.fail(msg)

    def take(self, n: int, what: str) -> bytes:
        self.need(0 <= n <= len(self.data) - self.at, f"truncated in {what}")
        self.at += n
        return self.data[self.at - n : self.at]

    def varint(self, what: str, top: int = 1 << 62) -> int:
        n, shift = 0, 0
        while True:
            self.need(self.at < len(self.data) and shift < 63, f"truncated or overlong number in {what}")
            b = self.data[self.at]
            self.at += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                self.need(b or shift == 7, f"overlong number in {what}")
                self.need(n <= top, f"{what} out of range")
                return n

    def text(self, what: str) -> str:
        raw = self.take(self.varint(what, MAX_NAME), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def is_compact(head: bytes) -> bool:
    return head[:3] == MAGIC


def spans(tokens: int, chunk: int) -> list[int]:
    """The token counts of a text document's chunks: ceil(tokens / chunk) near-equal ones, the first
    (tokens mod count) of them one token longer (equal spans: no short tail chunk)."""
    if not tokens:
        return []
    count = -(-tokens // chunk)
    base, extra = divmod(tokens, count)
    return [base + (i < extra) for i in range(count)]


def implied_name(stored_as: str | None) -> str:
    """The name of a document stored under none (flag bit 6): its archive's file name less .vec (that name
    with .out where it has no .vec); `stdin` where the archive has no file name or those give no valid name."""
    if stored_as is not None:
        base = stored_as[: -len(SUFFIX)] if stored_as.endswith(SUFFIX) else stored_as + ".out"
        try:
            return check_name(base) if "/" not in base else "stdin"
        except VecarcError:
            pass
    return "stdin"


def named_by_file(header: Header) -> bool:
    """Whether the archive's one document is named by its file name (flag bit 6): where a format-6 writer
    stores no name, so also where a reader found none."""
    return header.version >= 6 and _file_names(header)


def _file_names(header: Header) -> bool:
    docs = header.documents
    return len(docs) == 1 and header.stored_as is not None and implied_name(header.stored_as) == docs[0].name


def serialize(header: Header, blocks: dict[int, bytes]) -> bytes:
    """The file (format 6): header, the chunks' blocks in order, CRC-32. header.chunks must follow spans().
    A one-document archive whose header.stored_as gives its document's name stores no name."""
    check_layout(header)
    m, docs = header.model, header.documents
    default = m.source == DEFAULT_SOURCE_MARK or m.source.startswith(DEFAULT_SOURCE_MARK + ":")
    source = "" if default else m.source
    digest = bytes.fromhex(m.fingerprint.partition(":")[2])[: FP_BYTES[VERSION]]
    context, chunk = header.cram.get("context_tokens", 0), header.cram["chunk_tokens"]
    dictionary = header.cram.get("dictionary")
    dims = (m.vocab_size, m.hidden_size, m.sink_token_id)
    by_doc = header.chunks_by_document()
    by_file = _file_names(header)  # what this writer writes, whatever version the header was read as
    last = by_doc[-1][-1] if by_doc and by_doc[-1] else None  # its block stores no length
    flags = (FLAG_SOURCE if source else 0) | (FLAG_CONTEXT if context else 0) | (FLAG_DICT if dictionary else 0) | (
        FLAG_PREFIX if header.prefix is not None else 0) | (FLAG_DIMS if dims != DEFAULT_DIMS else 0) | (
        FLAG_CHUNK if chunk != DEFAULT_CHUNK else 0) | (FLAG_NAMED_BY_FILE if by_file else 0) | (
        FLAG_LAST_LITERAL if last is not None and header.chunks[last].kind == "tokens" else 0)
    out = bytearray(MAGIC + bytes([VERSION, flags]) + digest)
    if source:
        out += varint(len(source.encode())) + source.encode()
    if dictionary:
        out += bytes.fromhex(dictionary)
    sizes = (list(dims) if flags & FLAG_DIMS else []) + ([chunk] if flags & FLAG_CHUNK else []) + (
        [context] if context else [])
    out += b"".join(varint(x) for x in sizes)
    if header.prefix is not None:
        p = header.prefix
        out += varint(p.count) + varint(p.plain_bytes)
        out += b"".join(varint(mult) + p.q[i * p.hidden : (i + 1) * p.hidden] for i, mult in enumerate(p.mults))
    if not by_file:
        out += varint(len(docs))
    body = bytearray()
    for doc, mine in zip(docs, by_doc):
        name = b"" if by_file else varint(len(doc.name.encode())) + doc.name.encode()
        tokens = sum(header.chunks[i].tokens for i in mine) if doc.encoding == "text" else -1
        out += name + varint(doc.size) + varint(tokens + 1) + bytes.fromhex(doc.sha256)[:DOC_HASH_BYTES]
        for i in mine:
            c, block = header.chunks[i], blocks[i]
            kind = KIND_TOKENS if c.kind in ("tokens", "bytes") else KIND_CODED
            if i != last:
                out += varint(len(block) * 2 + kind) if c.kind != "bytes" else varint(len(block))
            c.offset, c.length = len(body), len(block)
            body += block
    data = bytes(out + body)
    return data + zlib.crc32(data).to_bytes(4, "little")


def parse(data: bytes, stored_as: str | None = None) -> tuple[Header, dict[int, bytes]]:
    """The header as typed records and each chunk's block; VecarcError for anything malformed. stored_as:
    the archive's file name, which names the document of an archive that stores no name."""
    need(len(data) >= 4 and data[3] in READS, f"unsupported compact version {data[3] if len(data) > 3 else '?'}")
    version = data[3]
    fp_bytes = FP_BYTES[version]
    need(len(data) >= 4 + 1 + fp_bytes + 4, "truncated before the end of the fixed header")
    if zlib.crc32(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise bad("checksum mismatch (the file is damaged)")
    r = Reader(data[:-4])
    r.take(4, "magic")
    flags = r.take(1, "flags")[0]
    known = FLAG_SOURCE | FLAG_CONTEXT | FLAG_DICT | FLAG_PREFIX
    need(not flags & ~(0xFF if version >= 6 else known), "reserved flags are set")
    fingerprint = "fp2:" + r.take(fp_bytes, "fingerprint").hex()
    source = r.text("model source") if flags & FLAG_SOURCE else DEFAULT_SOURCE_MARK
    dictionary = r.take(DICT_ID_BYTES, "dictionary id").hex() if flags & FLAG_DICT else None
    vocab, hidden, sink = _dims(r) if version == 5 or flags & FLAG_DIMS else DEFAULT_DIMS
    chunk = r.varint("chunk size", MAX_CHUNK_TOKENS) if version == 5 or flags & FLAG_CHUNK else DEFAULT_CHUNK
    need(chunk >= 1, "chunk size out of range")
    context = r.varint("context length", MAX_CONTEXT) if flags & FLAG_CONTEXT else 0
    need(context >= 1 or not flags & FLAG_CONTEXT, "context length out of range")
    prefix = _prefix(r, hidden) if flags & FLAG_PREFIX else None
    by_file = bool(flags & FLAG_NAMED_BY_FILE)
    ndocs = 1 if by_file else r.varint("document count", len(data))  # each document takes more than a byte
    names = [implied_name(stored_as)] if by_file else None
    docs, chunks, offset = _documents(r, ndocs, names, chunk, version, bool(flags & FLAG_LAST_LITERAL))
    last = chunks[-1] if chunks and chunks[-1].length is None else None  # the block that stores no length
    need(not flags & FLAG_LAST_LITERAL or (last is not None and last.kind == "tokens"),
         "the last block is flagged literal but is not a text chunk")
    check_names([d.name for d in docs])
    body = data[r.at : -4]
    if last is not None:
        need(offset <= len(body), f"the chunks' blocks take more than the body's {len(body)} bytes")
        chunks[-1].length = len(body) - offset
        offset = len(body)
    need(offset == len(body), f"the chunks' blocks take {offset} bytes, the body holds {len(body)}")
    for c in chunks:
        if c.kind != "bytes":
            need(c.kind == "coded" or (1 <= c.length and c.tokens <= MAX_LITERAL_TOKENS), "bad literal block")
            need(c.kind == "tokens" or c.tokens <= CODED_TOKENS_PER_BYTE * (c.length + 1),
                 f"a coded chunk declares {c.tokens} tokens for a stream of {c.length} bytes")
    blocks = {i: body[c.offset : c.offset + c.length] for i, c in enumerate(chunks)}
    name = "the default model" if source == DEFAULT_SOURCE_MARK else source.partition(":")[2].rsplit("/", 1)[-1]
    model = ModelRecord(name, source, fingerprint, "int", hidden, vocab, sink)
    cram = {"mode": "coded", "chunk_tokens": chunk} | ({"context_tokens": context} if context else {}) | (
        {"dictionary": dictionary} if dictionary else {})
    header = Header(model, VectorsRecord(1, "float32", hidden, 0), docs, chunks, cram,
                    decode=DecodeRecord("integer", "int", None), prefix=prefix, version=version,
                    stored_as=stored_as)
    return header, blocks


def _documents(r: Reader, ndocs: int, names: list[str] | None, chunk: int, version: int,
               last_literal: bool) -> tuple[list[Document], list[Chunk], int]:
    """Each document's fields and its chunks' blocks (offset, length: None for the archive's last block in
    format 6, whose length is the rest of the body); the blocks' total length."""
    docs, chunks, offset, total = [], [], 0, len(r.data)
    for d in range(ndocs):
        name = names[d] if names else check_name(r.text("a document name"))
        size = r.varint("a document size")
        tokens = r.varint("a document's token count") - 1
        digest = r.take(DOC_HASH_BYTES, "a document hash").hex()
        docs.append(Document(name, size, digest, "text" if tokens >= 0 else "bytes"))
        need(tokens <= CODED_TOKENS_PER_BYTE * total, f"document {name!r} declares {tokens} tokens")
        # every chunk but the archive's last takes a byte or more: refused before spans() allocates
        need(-(-tokens // chunk) <= total - r.at + 1, f"document {name!r} declares {tokens} tokens")
        lengths = spans(tokens, chunk) if tokens >= 0 else [None]
        for k, n in enumerate(lengths):
            implied = version >= 6 and d == ndocs - 1 and k == len(lengths) - 1  # the rest of the body
            if n is None:  # a bytes document's one block
                length = None if implied else r.varint("a block length", total)
                chunks.append(Chunk(d, "bytes", size=size, offset=offset, length=length))
            else:
                v = int(last_literal) if implied else r.varint("a chunk", 2 * total + 1)
                chunks.append(Chunk(d, "tokens" if v & 1 else "coded", n, offset=offset,
                                    length=None if implied else v >> 1))
            offset += chunks[-1].length or 0
    return docs, chunks, offset


def _dims(r: Reader) -> tuple[int, int, int]:
    vocab = r.varint("vocabulary size", 1 << 24)
    need(vocab >= 1, "vocabulary size out of range")
    hidden = r.varint("hidden size", 1 << 16)
    return vocab, hidden, r.varint("sink token", vocab - 1)


def _prefix(r: Reader, hidden: int) -> Prefix:
    count = r.varint("prefix vectors", MAX_PREFIX)
    need(count >= 1, "prefix vectors out of range")
    plain = r.varint("the prefix's plain size")
    need(count * (hidden + 1) <= len(r.data) - r.at, "truncated in the prefix vectors")
    mults, q = [], bytearray()
    for _ in range(count):
        mults.append(r.varint("a prefix multiplier", MAX_PREFIX_MULT))
        need(mults[-1] >= 1, "a prefix multiplier out of range")
        q += r.take(hidden, "the prefix vectors")
    return Prefix(bytes(q), tuple(mults), hidden, plain)


def check_layout(header: Header) -> None:
    """What the writer relies on: every text document's chunks follow spans(); refused otherwise (a bug)."""
    chunk = header.cram["chunk_tokens"]
    for doc, mine in zip(header.documents, header.chunks_by_document()):
        kinds = [header.chunks[i].kind for i in mine]
        if doc.encoding == "bytes":
            ok = kinds == ["bytes"]
        else:
            sizes = [header.chunks[i].tokens for i in mine]
            ok = sizes == spans(sum(sizes), chunk) and set(kinds) <= {"coded", "tokens"}
        if not ok:
            raise VecarcError(f"internal error: document {doc.name!r} does not have format 5's chunk layout")
