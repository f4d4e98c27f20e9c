"""The .vec file format (docs/format.md): typed header records, the container, and the vector forms.

header: the records and their validation; names: what a document may be called;
container: reading (trusting nothing) and writing; strict: the JSON a reader accepts;
corrections: what predicted chunks store; quant: how numbers are stored; basis: the fixed
±1 basis of low-rank vectors; index: the volume index.
"""

from .container import (
    CHECKSUM_LEN,
    MAGIC,
    PREFIX,
    VERSION,
    Archive,
    compress_header,
    decode_tokens,
    encode_tokens,
    literal_bytes,
    parse_archive,
    read_archive,
    serialize,
    write_atomic,
)
from .header import (
    HASH_CHARS,
    MAX_LITERAL_TOKENS,
    Chunk,
    CorrectionsRecord,
    DecodeRecord,
    Document,
    Header,
    ModelRecord,
    VectorsRecord,
    greedy_cap,
    is_number,
    token_hash,
)
from .names import check_name, check_names

__all__ = [
    "CHECKSUM_LEN", "HASH_CHARS", "MAGIC", "MAX_LITERAL_TOKENS", "PREFIX", "VERSION", "Archive", "Chunk",
    "CorrectionsRecord", "DecodeRecord", "Document", "Header", "ModelRecord", "VectorsRecord", "check_name",
    "check_names",
    "compress_header", "decode_tokens", "encode_tokens", "greedy_cap", "is_number", "literal_bytes", "parse_archive",
    "read_archive", "serialize", "token_hash", "write_atomic",
]
