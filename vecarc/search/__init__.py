"""Optimising memory vectors: the expensive half of vecarc.

settings: what a search is asked to do; step: one teacher-forced step and Adam;
loop: the continuous-batching scheduler with its greedy check, snapshot and restore.
"""

from .loop import CramResult, Job, chunk_key, cram
from .settings import AUTO_RANK, COMPILE_MIN_CHUNKS, SEARCH_DTYPES, VECTOR_DTYPES, SearchSettings, wants_compile
from .step import by_length

__all__ = [
    "AUTO_RANK", "COMPILE_MIN_CHUNKS", "SEARCH_DTYPES", "VECTOR_DTYPES", "CramResult", "Job", "SearchSettings",
    "by_length", "chunk_key", "cram", "wants_compile",
]
