"""The ledger: every chunk's fate as it is settled, by (document, start), from any source.

Chunks computed in this process, by a Ray worker, or read back from a journal all
arrive as ChunkRecords through `take`; the ledger checks each against the plan,
makes it a header entry (by its kind's `settle`), and journals what it did not
read from the journal. The archive is assembled from what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chunks import SETTLE, ChunkRecord, Settled, Tag
from .chunks.record import Dims, need
from .errors import VecarcError, VerificationError
from .journal import Journal
from .plan import Plan


class Ledger:
    def __init__(self, plan: Plan, dims: Dims, journal: Journal | None = None):
        self.plan, self.dims, self.journal = plan, dims, journal
        self.kept: dict[tuple[int, int], Settled] = {}
        self.retries = 0  # vector chunks split after a failed search
        self.steps: list[int] = []  # optimisation steps per vector chunk, in settling order

    def take(self, rec: ChunkRecord, origin: str = "here") -> None:
        """Settle one chunk (a split counts a retry: its halves come as records of their own).

        origin: "here" (this process's greedy check decoded it), "worker" (another process's did:
        decoded again before anything is written) or "journal" (likewise, and not journaled again).
        """
        d, a, b = rec.tag
        need(d in self.plan.tokens and b <= len(self.plan.tokens[d]), f"no planned chunk {list(rec.tag)}")
        if rec.outcome == "split":
            self.retries += 1
        else:
            self.kept[(d, a)] = SETTLE[rec.outcome](rec, self.plan, self.dims, origin != "here")
            if rec.outcome == "vector":
                self.steps.append(rec.steps)
        if self.journal is not None and origin != "journal":
            self.journal.add_result(*rec.to_journal())

    def replay(self, results: Sequence[tuple[dict, dict]]) -> None:
        """Settle the records a journal kept, each checked as it is read."""
        for meta, tensors in results:
            try:
                self.take(ChunkRecord.from_journal(meta, tensors), origin="journal")
            except VecarcError as e:
                raise VerificationError(f"a journal record is malformed ({e})") from None

    def todo(self) -> list[Tag]:
        """The planned spans settled chunks do not cover yet (all of them, before a resume)."""
        return [x for x in self.plan.spans if not self.covers(*x)]

    def covers(self, d: int, a: int, b: int) -> bool:
        """Whether settled chunks (the span's own, or its halves') cover tokens a..b of document d."""
        while a < b:
            s = self.kept.get((d, a))
            if s is None:
                return False
            a += s.record.tokens
        return True
