"""What `info` shows: an archive's or a volume index's summary, from headers alone (no model)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .format import Archive, compact, is_number
from .volumes import Indexed


def spread(xs: Sequence[float]) -> dict:
    """min, median and max: how the project reports a distribution."""
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def summary(archive: Archive | Indexed) -> dict:
    """Everything `info` shows, computed from the header (of an index: the index and each volume's header)."""
    if isinstance(archive, Indexed):
        return index_summary(archive)
    h = archive.header
    chunks = h.chunks
    kinds = {k: sum(1 for c in chunks if c.kind == k) for k in ("vector", "predicted", "coded", "tokens", "bytes")}
    vectors = [c for c in chunks if c.kind == "vector"]
    # margin, planned_nats and plan are informational: the reader keeps only well-typed values.
    margins = [c.margin for c in vectors if c.margin is not None]
    planned = [c.planned_nats for c in vectors if c.planned_nats is not None]
    vec_bytes = h.vectors.section[1]
    corrections_bytes = h.corrections.section[1] if h.corrections else 0
    lit_bytes = sum(c.length for c in chunks if c.is_literal)
    coded_bytes = sum(c.length for c in chunks if c.kind == "coded")
    total_in = sum(d.size for d in h.documents)
    v = h.vectors
    return {
        "archive_bytes": archive.size,
        "original_bytes": total_in,
        "ratio": (total_in / archive.size) if archive.size else None,
        "vector_bytes": vec_bytes,
        "corrections_bytes": corrections_bytes,
        "literal_bytes": lit_bytes,
        "coded_bytes": coded_bytes,
        "overhead_bytes": archive.size - vec_bytes - corrections_bytes - lit_bytes - coded_bytes,
        "format_version": h.version,
        "name_from_file": compact.named_by_file(h),  # format 6: the one document's name is the file's
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
                   "coded_tokens": sum(c.tokens for c in chunks if c.kind == "coded"),
                   "min_margin": min(margins) if margins else None},
        "plan": _plan(h.plan),
        "prefix": None if h.prefix is None else {
            "vectors": h.prefix.count, "stored_bytes": h.prefix.count * h.prefix.hidden,
            "bytes_without": h.prefix.plain_bytes, "saved_bytes": h.prefix.plain_bytes - archive.size},
        "documents": _documents(archive),
    }


def _documents(archive: Archive) -> list[dict]:
    h = archive.header
    by_doc = [[h.chunks[i] for i in mine] for mine in h.chunks_by_document()]
    return [{**doc.to_json(), "chunks": len(mine), "vector_chunks": sum(c.kind == "vector" for c in mine),
             "predicted_chunks": sum(c.kind == "predicted" for c in mine),
             "coded_chunks": sum(c.kind == "coded" for c in mine),
             "literal_chunks": sum(c.is_literal for c in mine), "tokens": sum(c.tokens for c in mine)}
            for doc, mine in zip(h.documents, by_doc)]


def _plan(p: object) -> dict | None:
    """The header's plan record if it has the shape `info` prints, else None."""
    if not isinstance(p, dict) or p.get("method") not in ("capacity", "fixed"):
        return None
    need = ("budget_nats", "fill") if p["method"] == "capacity" else ("chunk_tokens",)
    if not all(is_number(p.get(k)) for k in need + ("chunks_planned", "retries")):
        return None
    return p


def index_summary(ix: Indexed) -> dict:
    """An index's summary: its volumes (each from its header) and its documents."""
    index = ix.index
    vols = []
    for k, v in enumerate(index.volumes):
        s = summary(ix.volume(k, load_vectors=False))
        vols.append({"file": v.file, "bytes": v.size, "original_bytes": s["original_bytes"],
                     "documents": len(s["documents"]), "chunks": s["chunks"]["total"],
                     "vector_chunks": s["chunks"]["vector"], "tokens": sum(d["tokens"] for d in s["documents"])})
    original = sum(d.size for d in index.documents)
    stored = ix.path.stat().st_size + sum(v.size for v in index.volumes)
    return {"index": str(ix.path), "volumes": vols, "original_bytes": original, "archive_bytes": stored,
            "ratio": original / stored if stored else None,
            "documents": [{"name": d.name, "size": d.size, "sha256": d.sha256,
                           "parts": [index.volumes[p.volume].file for p in d.parts]} for d in index.documents]}


def listing(archive: Archive | Indexed) -> list[dict]:
    """One row per document (`vecarc list`): name, size, bytes stored, chunks and how they are stored.

    Bytes stored are the document's share of the body: its literal blocks, its rows of the vectors
    section and its part of the corrections section (by its corrections' count); the header and
    checksum are the archive's, not a document's. Of an index, the shares of every part add up.
    """
    if isinstance(archive, Indexed):
        rows: dict[str, dict] = {}
        for k in archive.volumes_holding():
            for row in listing(archive.volume(k, load_vectors=False)):
                have = rows.setdefault(row["name"], {**row, "size": 0, "stored": 0, "chunks": 0, "kinds": []})
                for key in ("size", "stored", "chunks"):
                    have[key] += row[key]
                have["kinds"] = sorted(set(have["kinds"]) | set(row["kinds"]))
        return [rows[d.name] for d in archive.index.documents]
    h = archive.header
    vec_len, vec_rows = h.vectors.section[1], max(1, h.vectors.count)
    fix_len, fixes = (h.corrections.section[1], max(1, h.corrections.count)) if h.corrections else (0, 1)
    out = []
    for doc, mine in zip(h.documents, h.chunks_by_document()):
        chunks = [h.chunks[i] for i in mine]
        stored = sum(c.length for c in chunks if c.in_body)
        stored += vec_len * sum(c.kind == "vector" for c in chunks) / vec_rows
        stored += fix_len * sum(c.corrections for c in chunks) / fixes
        kinds = sorted({"literal" if c.is_literal else c.kind for c in chunks})
        out.append({"name": doc.name, "size": doc.size, "stored": round(stored), "chunks": len(chunks),
                    "kinds": kinds, "sha256": doc.sha256})
    return out
