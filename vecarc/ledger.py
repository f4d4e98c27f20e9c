"""The ledger: every chunk's fate as it is settled, by (document, start), from any source.

Chunks computed in this process, by a Ray worker, or read back from a journal all
arrive as ChunkRecords through `take`; the ledger checks each against the plan,
makes it a header entry (by its kind's `settle`), and journals what it did not
read from the journal. The archive is assembled from what it holds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .chunks import SETTLE, ChunkRecord, Settled, Tag
from .chunks.record import Dims, need
from .errors import VecarcError, VerificationError
from .journal import Journal
from .plan import Plan, split_span


class Ledger:
    def __init__(self, plan: Plan, dims: Dims, outcomes: Sequence[str], journal: Journal | None = None):
        self.plan, self.dims, self.outcomes, self.journal = plan, dims, tuple(outcomes), journal
        self.kept: dict[tuple[int, int], Settled] = {}
        self.retries = 0  # vector chunks split after a failed search
        self.steps: list[int] = []  # optimisation steps per vector chunk, in settling order
        self._starts: dict[int, list[int]] = {}  # document -> its planned spans' starts, in order
        self._ends: dict[tuple[int, int], int] = {}
        for d, a, b in plan.spans:
            self._starts.setdefault(d, []).append(a)
            self._ends[(d, a)] = b

    def planned(self, tag: Tag) -> bool:
        """Whether tag is a planned span, or a half (of a half ...) of one: the only chunks a pack computes."""
        d, a, b = tag
        starts = self._starts.get(d, [])
        i = bisect.bisect_right(starts, a) - 1
        if i < 0:
            return False
        x, y = starts[i], self._ends[(d, starts[i])]
        while (x, y) != (a, b) and y - x > 1:
            x, y = next(((p, q) for p, q in split_span(x, y) if p <= a and b <= q), (a, a))
        return (x, y) == (a, b)

    def tokens_of(self, tag: Tag) -> Sequence[int]:
        """A planned chunk's tokens; a tag that names none (a damaged journal's) is refused."""
        if not self.planned(tag):
            raise VerificationError(f"the journal names no planned chunk {list(tag)}")
        d, a, b = tag
        return self.plan.tokens[d][a:b]

    def take(self, rec: ChunkRecord, origin: str = "here") -> None:
        """Settle one chunk (a split counts a retry: its halves come as records of their own).

        origin: "here" (this process's greedy check decoded it), "worker" (another process's did:
        decoded again before anything is written) or "journal" (likewise, and not journaled again).
        """
        d, a, b = rec.tag
        need(self.planned(rec.tag), f"no planned chunk {list(rec.tag)}")
        need(rec.outcome in self.outcomes, f"a {rec.outcome} chunk in a pack that makes {', '.join(self.outcomes)}")
        if rec.outcome == "split":
            self.retries += 1
        else:
            for inner in [k for k in self.kept if k[0] == d and a < k[1] < b]:
                del self.kept[inner]  # a half settled before its whole was computed again (a resume elsewhere)
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
