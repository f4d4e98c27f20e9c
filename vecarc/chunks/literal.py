"""Literal chunks: what the model is not asked to hold, stored losslessly.

Tokens the model could not be made to decode (a vector chunk too short to split, a
predicted chunk whose corrections cost more than its tokens) become literal token
blocks, neighbours merged into one zstd frame; a document that does not survive the
tokenizer's round trip is one zstd frame of its bytes.
"""

from __future__ import annotations

from ..format import Archive, Chunk, decode_tokens, literal_bytes
from ..plan import Plan
from .record import ChunkRecord, Dims, Settled


def settle(rec: ChunkRecord, plan: Plan, dims: Dims, replayed: bool) -> Settled:
    d, a, b = rec.tag
    return Settled(Chunk(d, "tokens", b - a))


def tokens(archive: Archive, i: int) -> list[int]:
    """A literal token block's ids, refused as corrupt unless exactly its recorded count of valid ids."""
    return decode_tokens(archive.literals[i], archive.chunks[i].tokens, archive.header.model.vocab_size)


def document(archive: Archive, i: int) -> bytes:
    """A bytes document's one frame."""
    return literal_bytes(archive, i)

