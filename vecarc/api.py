"""The Python API: pack, unpack, verify, read, summarise. The CLI is a thin layer over this.

Packing lives in vecarc.packing, reading back in vecarc.unpacking, the tokenizer round
trip in vecarc.text; this module gathers them and adds `summary` (what `info` shows).
"""

from __future__ import annotations

from .capacity import spread
from .format import Archive, is_number
from .packing import (
    PackResult,
    capacity_budget,
    check_input,
    checked_bytes,
    document_name,
    output_for,
    pack,
    pack_documents,
    read_inputs,
    software_versions,
)
from .text import detokenize, tokenize_exact
from .unpacking import (
    DecodeResult,
    decode_archive,
    install_hint,
    model_for,
    required_margin,
    unpack,
    verify,
)

__all__ = [
    "Archive", "DecodeResult", "PackResult", "capacity_budget", "check_input", "checked_bytes", "decode_archive",
    "detokenize", "document_name", "install_hint", "model_for", "output_for", "pack", "pack_documents",
    "read_inputs", "required_margin", "software_versions", "spread", "summary", "tokenize_exact", "unpack", "verify",
]


def summary(archive: Archive) -> dict:
    """Everything `info` shows, computed from the header alone."""
    h = archive.header
    chunks = h.chunks
    kinds = {k: sum(1 for c in chunks if c.kind == k) for k in ("vector", "predicted", "tokens", "bytes")}
    vectors = [c for c in chunks if c.kind == "vector"]
    # margin, planned_nats and plan are informational: the reader keeps only well-typed values.
    margins = [c.margin for c in vectors if c.margin is not None]
    planned = [c.planned_nats for c in vectors if c.planned_nats is not None]
    vec_bytes = h.vectors.section[1]
    fix_bytes = h.corrections.section[1] if h.corrections else 0
    lit_bytes = sum(c.length for c in chunks if c.is_literal)
    by_doc = [[chunks[i] for i in mine] for mine in h.chunks_by_document()]
    docs = [{**doc.to_json(), "chunks": len(mine), "vector_chunks": sum(c.kind == "vector" for c in mine),
             "predicted_chunks": sum(c.kind == "predicted" for c in mine),
             "literal_chunks": sum(c.is_literal for c in mine), "tokens": sum(c.tokens for c in mine)}
            for doc, mine in zip(h.documents, by_doc)]
    total_in = sum(d.size for d in h.documents)
    v = h.vectors
    return {
        "archive_bytes": archive.size,
        "original_bytes": total_in,
        "ratio": (total_in / archive.size) if archive.size else None,
        "vector_bytes": vec_bytes,
        "corrections_bytes": fix_bytes,
        "literal_bytes": lit_bytes,
        "overhead_bytes": archive.size - vec_bytes - fix_bytes - lit_bytes,
        "format_version": h.version,
        "model": h.model.to_json(),
        "vectors": {"per_chunk": v.per_chunk, "dtype": v.dtype, "hidden_size": v.hidden_size, "count": v.count,
                    "rank": v.rank},
        "cram": h.cram,
        "decode": h.decode.to_json() if h.decode else None,
        "software": h.software,
        "chunks": {"total": len(chunks), **kinds,
                   "tokens_per_vector": spread([c.tokens for c in vectors]) if vectors else None,
                   "planned_nats_per_vector": spread(planned) if planned else None,
                   "literal_blocks": kinds["tokens"] + kinds["bytes"],
                   "corrections": sum(c.corrections for c in chunks),
                   "predicted_tokens": sum(c.tokens for c in chunks if c.kind == "predicted"),
                   "min_margin": min(margins) if margins else None},
        "plan": _plan(h.plan),
        "documents": docs,
    }


def _plan(p: object) -> dict | None:
    """The header's plan record if it has the shape `info` prints, else None."""
    if not isinstance(p, dict) or p.get("method") not in ("capacity", "fixed"):
        return None
    need = ("budget_nats", "fill") if p["method"] == "capacity" else ("chunk_tokens",)
    if not all(is_number(p.get(k)) for k in need + ("chunks_planned", "retries")):
        return None
    return p


