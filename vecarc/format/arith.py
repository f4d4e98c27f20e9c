"""A multi-symbol range coder over exact integer frequencies (docs/format.md, "Multi-symbol range coder").

A 64-bit range, renormalised a byte at a time below 2^56, so a total up to 2^28 costs
under 2^-28 of a bit per symbol in rounding. The stream ends with the fewest bytes that
single out the final interval, and trailing zero bytes are dropped: the decoder reads
zeros past the end. Symbols are (start, size, total) with 0 <= start < start + size <=
total; the caller computes them from the integer model's frequencies.
"""

from __future__ import annotations

BITS = 64
FULL = 1 << BITS
MASK = FULL - 1
BOTTOM = 1 << (BITS - 8)


class Encoder:
    def __init__(self) -> None:
        self.low, self.range, self.out = 0, MASK, bytearray()

    def _carry(self) -> None:
        i = len(self.out) - 1
        while self.out[i] == 0xFF:
            self.out[i] = 0
            i -= 1
        self.out[i] += 1

    def encode(self, start: int, size: int, total: int) -> None:
        r = self.range // total
        self.low += r * start
        self.range = r * size
        if self.low >= FULL:
            self._carry()
            self.low -= FULL
        while self.range < BOTTOM:
            self.out.append(self.low >> (BITS - 8))
            self.low = (self.low << 8) & MASK
            self.range <<= 8

    def finish(self) -> bytes:
        for k in range(1, 9):
            step = 1 << (BITS - 8 * k)
            v = -(-self.low // step) * step
            if v < self.low + self.range:
                break
        if v >= FULL:
            self._carry()
            v -= FULL
        self.out.extend(v.to_bytes(8, "big")[:k])
        return bytes(self.out).rstrip(b"\0")


class Decoder:
    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.range = data, 8, MASK
        self.code = int.from_bytes(data[:8].ljust(8, b"\0"), "big")

    def target(self, total: int) -> int:
        """The value in [0, total) that names the next symbol; ValueError where no symbol could be."""
        self.r = self.range // total
        v = self.code // self.r
        if v >= total:
            raise ValueError("range-coded stream: a value outside every symbol")
        return v

    def consume(self, start: int, size: int) -> None:
        self.code -= self.r * start
        self.range = self.r * size
        while self.range < BOTTOM:
            byte = self.data[self.at] if self.at < len(self.data) else 0
            self.at += 1
            self.code = ((self.code << 8) | byte) & MASK
            self.range <<= 8

