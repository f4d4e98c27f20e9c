"""An adaptive binary range coder (the one LZMA uses), exact in integers on every platform.

docs/format.md ("Range coder") specifies it bit for bit. Probabilities are 11-bit
integers that move 1/32 of the way toward each coded bit; `direct` bits are coded
at probability 1/2 without a model. The decoder refuses a stream that ends early
or has bytes left over, so the coded size is exactly what the header says.
"""

from __future__ import annotations

PROB_BITS, MOVE_BITS = 11, 5
ONE = 1 << PROB_BITS
TOP = 1 << 24
MASK32 = (1 << 32) - 1


class Encoder:
    def __init__(self) -> None:
        self.low, self.range, self.cache, self.cache_size = 0, MASK32, 0, 1
        self.out = bytearray()

    def _shift_low(self) -> None:
        if self.low < 0xFF000000 or self.low > MASK32:
            carry = self.low >> 32
            temp = self.cache
            while True:
                self.out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self.cache_size -= 1
                if not self.cache_size:
                    break
            self.cache = (self.low >> 24) & 0xFF
        self.cache_size += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def bit(self, probs: list[int], i: int, bit: int) -> None:
        p = probs[i]
        bound = (self.range >> PROB_BITS) * p
        if bit:
            self.low += bound
            self.range -= bound
            probs[i] = p - (p >> MOVE_BITS)
        else:
            self.range = bound
            probs[i] = p + ((ONE - p) >> MOVE_BITS)
        while self.range < TOP:
            self.range <<= 8
            self._shift_low()

    def direct(self, value: int, nbits: int) -> None:
        for k in range(nbits - 1, -1, -1):
            self.range >>= 1
            if (value >> k) & 1:
                self.low += self.range
            while self.range < TOP:
                self.range <<= 8
                self._shift_low()

    def finish(self) -> bytes:
        for _ in range(5):
            self._shift_low()
        return bytes(self.out)


class Decoder:
    def __init__(self, data: bytes) -> None:
        if len(data) < 5 or data[0] != 0:
            raise ValueError("range-coded stream: bad start")
        self.data, self.at = data, 5
        self.code, self.range = int.from_bytes(data[1:5], "big"), MASK32
        if self.code == MASK32:
            raise ValueError("range-coded stream: bad start")

    def _next(self) -> int:
        if self.at >= len(self.data):
            raise ValueError("range-coded stream: ends early")
        self.at += 1
        return self.data[self.at - 1]

    def bit(self, probs: list[int], i: int) -> int:
        p = probs[i]
        bound = (self.range >> PROB_BITS) * p
        if self.code < bound:
            self.range = bound
            probs[i] = p + ((ONE - p) >> MOVE_BITS)
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            probs[i] = p - (p >> MOVE_BITS)
            bit = 1
        while self.range < TOP:
            self.range <<= 8
            self.code = ((self.code << 8) | self._next()) & MASK32
        return bit

    def direct(self, nbits: int) -> int:
        value = 0
        for _ in range(nbits):
            self.range >>= 1
            bit = 1 if self.code >= self.range else 0
            if bit:
                self.code -= self.range
            value = (value << 1) | bit
            while self.range < TOP:
                self.range <<= 8
                self.code = ((self.code << 8) | self._next()) & MASK32
        return value

    def finish(self) -> None:
        if self.at != len(self.data):
            raise ValueError(f"range-coded stream: {len(self.data) - self.at} bytes left over")
