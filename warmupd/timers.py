"""The in-memory timer heap: add, cancel, next deadline, pop due.

Each entry is one Python int, ``due_ms << 41 | kind << 40 | id``, so a pending
send costs about 44 bytes (the int plus its slot in the list) instead of an
asyncio handle per send. Cancellation is lazy: a cancelled id is remembered and
dropped when it reaches the top.
"""

from __future__ import annotations

import heapq

SEND = 0
ACTION = 1
_ID_BITS = 40
_ID_MASK = (1 << _ID_BITS) - 1


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[int] = []
        self._cancelled: set[int] = set()  # (kind << 40 | id)
        self._live: set[int] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, item: tuple[int, int]) -> bool:
        kind, ident = item
        return (kind << _ID_BITS | ident) in self._live

    def push(self, due_ms: int, ident: int, kind: int = SEND) -> bool:
        """Add a timer; returns True when it became the earliest one."""
        tag = kind << _ID_BITS | ident
        if tag in self._live:
            return False
        self._cancelled.discard(tag)
        self._live.add(tag)
        key = due_ms << 41 | tag
        heapq.heappush(self._heap, key)
        return self._heap[0] == key

    def cancel(self, ident: int, kind: int = SEND) -> bool:
        tag = kind << _ID_BITS | ident
        if tag not in self._live:
            return False
        self._live.discard(tag)
        self._cancelled.add(tag)
        return True

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and (heap[0] & ((1 << 41) - 1)) in self._cancelled:
            self._cancelled.discard(heapq.heappop(heap) & ((1 << 41) - 1))

    def next_due_ms(self) -> int | None:
        self._drop_cancelled()
        return self._heap[0] >> 41 if self._heap else None

    def pop_due(self, now_ms: int) -> list[tuple[int, int, int]]:
        """(due_ms, kind, id) of every timer due at or before ``now_ms``, earliest first."""
        out = []
        heap = self._heap
        while True:
            self._drop_cancelled()
            if not heap or heap[0] >> 41 > now_ms:
                return out
            key = heapq.heappop(heap)
            tag = key & ((1 << 41) - 1)
            self._live.discard(tag)
            out.append((key >> 41, tag >> _ID_BITS, tag & _ID_MASK))

    def peek(self, n: int) -> list[tuple[int, int, int]]:
        """Up to ``n`` earliest live timers (due_ms, kind, id), without removing them."""
        out = []
        for key in heapq.nsmallest(n + len(self._cancelled), self._heap) if self._cancelled else heapq.nsmallest(n, self._heap):
            tag = key & ((1 << 41) - 1)
            if tag in self._live:
                out.append((key >> 41, tag >> _ID_BITS, tag & _ID_MASK))
                if len(out) == n:
                    break
        return out

    def ids(self, kind: int = SEND) -> set[int]:
        return {t & _ID_MASK for t in self._live if t >> _ID_BITS == kind}
