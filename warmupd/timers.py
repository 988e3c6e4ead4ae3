"""The in-memory timer structure: add, cancel, next deadline, pop due.

Only the near future is held here (firing.py pages sends in from the store
ahead of their time), and each entry is as small as we can make it in Python:

* one int in a heap list, ``due_ms << 41 | kind << 40 | id`` (an 83-bit int,
  36 bytes, plus its 8-byte slot);
* one bit in a bitmap over the send ids held (ids are handed out in order, so
  the ids of the near future sit in a narrow range), telling whether an id is
  held; engagement actions (few) are kept in a plain set instead.

Cancellation is lazy: a cancelled entry is remembered and dropped when it
reaches the top (or when cancelled entries pile up, by one rebuild).
"""

from __future__ import annotations

import heapq

SEND = 0
ACTION = 1
_ID_BITS = 40
_ID_MASK = (1 << _ID_BITS) - 1
_TAG_MASK = (1 << 41) - 1
_COMPACT_AT = 4096  # cancelled entries before a rebuild is considered


class _IdBits:
    """A set of ints from a narrow range, one bit each (a bytearray from ``base``)."""

    def __init__(self) -> None:
        self._base = 0
        self._bits = bytearray()

    def _fit(self, i: int) -> int:
        if not self._bits:
            self._base = i & ~7
        if i < self._base:  # an older id than any held: grow downwards
            new_base = i & ~7
            self._bits[:0] = bytes((self._base - new_base) >> 3)
            self._base = new_base
        off = i - self._base
        need = (off >> 3) + 1
        if need > len(self._bits):
            self._bits.extend(bytes(max(need - len(self._bits), len(self._bits) // 2, 1024)))
        return off

    def add(self, i: int) -> bool:
        """Set; False when it was set already."""
        off = self._fit(i)
        byte, bit = off >> 3, 1 << (off & 7)
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        return True

    def discard(self, i: int) -> bool:
        """Clear; False when it was not set."""
        off = i - self._base
        if off < 0 or (off >> 3) >= len(self._bits):
            return False
        byte, bit = off >> 3, 1 << (off & 7)
        if not self._bits[byte] & bit:
            return False
        self._bits[byte] &= ~bit & 0xFF
        return True

    def __contains__(self, i: int) -> bool:
        off = i - self._base
        return 0 <= off and (off >> 3) < len(self._bits) and bool(self._bits[off >> 3] & (1 << (off & 7)))

    def trim(self) -> None:
        """Drop leading and trailing empty bytes (after many pops)."""
        b = self._bits
        start = 0
        while start < len(b) and not b[start]:
            start += 1
        end = len(b)
        while end > start and not b[end - 1]:
            end -= 1
        if start or end < len(b):
            self._bits = bytearray(b[start:end])
            self._base += start << 3

    def nbytes(self) -> int:
        return len(self._bits)


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[int] = []
        self._cancelled: set[int] = set()  # tags (kind << 40 | id) still in the heap but cancelled
        self._sends = _IdBits()  # send ids held (live)
        self._actions: set[int] = set()  # action ids held (live)
        self._n = 0
        self._pops = 0

    def __len__(self) -> int:
        return self._n

    def _live(self, kind: int) -> _IdBits | set[int]:
        return self._sends if kind == SEND else self._actions

    def __contains__(self, item: tuple[int, int]) -> bool:
        kind, ident = item
        return ident in self._live(kind)

    def push(self, due_ms: int, ident: int, kind: int = SEND) -> bool:
        """Add a timer; returns True when it became the earliest one. An id that is
        held already is not added twice."""
        live = self._live(kind)
        if ident in live:
            return False
        live.add(ident)
        tag = kind << _ID_BITS | ident
        self._cancelled.discard(tag)
        self._n += 1
        key = due_ms << 41 | tag
        heapq.heappush(self._heap, key)
        return self._heap[0] == key

    def cancel(self, ident: int, kind: int = SEND) -> bool:
        """Cancel a held timer; False (and nothing remembered) when it is not held."""
        if not self._live(kind).discard(ident):
            return False
        self._cancelled.add(kind << _ID_BITS | ident)
        self._n -= 1
        if len(self._cancelled) > _COMPACT_AT and len(self._cancelled) > len(self._heap) // 2:
            self._compact()
        return True

    def _compact(self) -> None:
        cancelled = self._cancelled
        self._heap = [k for k in self._heap if (k & _TAG_MASK) not in cancelled]
        heapq.heapify(self._heap)
        cancelled.clear()

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and (heap[0] & _TAG_MASK) in self._cancelled:
            self._cancelled.discard(heapq.heappop(heap) & _TAG_MASK)

    def next_due_ms(self) -> int | None:
        self._drop_cancelled()
        return self._heap[0] >> 41 if self._heap else None

    def pop_due(self, now_ms: int) -> list[tuple[int, int, int]]:
        """(due_ms, kind, id) of every timer due at or before ``now_ms``, earliest first."""
        out: list[tuple[int, int, int]] = []
        heap = self._heap
        while True:
            self._drop_cancelled()
            if not heap or heap[0] >> 41 > now_ms:
                break
            key = heapq.heappop(heap)
            tag = key & _TAG_MASK
            kind, ident = tag >> _ID_BITS, tag & _ID_MASK
            self._live(kind).discard(ident)
            self._n -= 1
            out.append((key >> 41, kind, ident))
        self._pops += len(out)
        if self._pops > 100_000:
            self._pops = 0
            self._sends.trim()
        return out

    def peek(self, n: int) -> list[tuple[int, int, int]]:
        """Up to ``n`` earliest live timers (due_ms, kind, id), without removing them."""
        out: list[tuple[int, int, int]] = []
        keys = heapq.nsmallest(n + len(self._cancelled), self._heap) if self._cancelled else heapq.nsmallest(n, self._heap)
        for key in keys:
            tag = key & _TAG_MASK
            if tag not in self._cancelled:
                out.append((key >> 41, tag >> _ID_BITS, tag & _ID_MASK))
                if len(out) == n:
                    break
        return out

    def nbytes(self) -> int:
        """Roughly what the structure takes (for status and benchmarks)."""
        return 44 * len(self._heap) + self._sends.nbytes() + 100 * (len(self._actions) + len(self._cancelled))
