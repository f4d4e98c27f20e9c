"""Optimising memory vectors: the expensive half of vecarc.

settings: what a search is asked to do; step: one teacher-forced step and Adam;
loop: the continuous-batching scheduler with its greedy check, snapshot and restore.
"""

from .loop import CramResult, Job, Progress, Trace, chunk_key, cram, emit
from .settings import AUTO_RANK, COMPILE_MIN_CHUNKS, MODES, SEARCH_DTYPES, VECTOR_DTYPES, CramSettings, wants_compile
from .step import by_length, chunk_forward, logit_margins, teacher_forced

__all__ = [
    "AUTO_RANK", "COMPILE_MIN_CHUNKS", "MODES", "SEARCH_DTYPES", "VECTOR_DTYPES", "CramResult", "CramSettings", "Job",
    "Progress", "Trace", "by_length", "chunk_forward", "chunk_key", "cram", "emit", "logit_margins", "teacher_forced",
    "wants_compile",
]
