"""Mailbox hygiene: warmup mail does not pile up in the pool's mailboxes.

Once a warmup message is older than ``engagement.keep_days`` (14 by default; 0
keeps everything) it goes: the receiver's copy in INBOX, the junk folder and the
archive folder, and the sender's copy in its Sent folder where the provider saves
one. ``engagement.hygiene`` says how: ``trash`` (the default: moved to the folder
with SPECIAL-USE ``\\Trash``, which the provider empties; on Gmail that is the only
IMAP way to delete), ``delete`` (``\\Deleted`` and an expunge of just those
messages), or ``off``.

Only mail proven to be warmup mail is touched: it must carry the ``X-Warmup-Id``
header, be older than ``keep_days`` by its IMAP internal date, and its Message-ID
must be on record (table ``received``) as warmup mail this account received and
engaged with, or (in Sent) sent and saw received. Real mail never matches all
three. Each copy cleaned is noted so it is not looked for again.

Runs on the account's own IMAP connection between two IDLEs (imap.Watcher.call),
every ``HYGIENE_EVERY`` (6 h) and a minute after start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any, Protocol

from .store import Store

HEADERS = "X-WARMUP-ID MESSAGE-ID"


class Mailbox(Protocol):
    """The IMAP operations hygiene needs (imap.Watcher has them)."""

    caps: set[str]

    async def select(self, folder: str) -> Any: ...
    async def search(self, *criteria: str) -> list[int]: ...
    async def fetch(self, uids: list[int], items: str) -> list[tuple[int, set[str], bytes]]: ...
    async def move(self, uid: int, dest: str) -> None: ...
    async def delete(self, uids: Sequence[int]) -> None: ...


@dataclass
class Cleaned:
    by_folder: dict[str, int] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)  # Message-IDs of received copies cleaned
    sent: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_folder.values())


def imap_date(ts: float) -> str:
    """The date of ``ts`` as IMAP SEARCH writes it ("01-Dec-2026"), in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%d-%b-%Y")


async def clean(box: Mailbox, store: Store, account: str, folders: Sequence[tuple[str, str]],
                trash: str | None, mode: str, keep_days: int, now: float,
                parse: Any) -> Cleaned:
    """Clean ``folders`` ((name, "received" | "sent")) of one account's mailbox.

    ``parse(raw) -> Message`` reads a header block. Returns what was cleaned."""
    out = Cleaned()
    if mode == "off" or keep_days <= 0:
        return out
    before = imap_date(now - keep_days * 86400)
    for folder, role in folders:
        if folder == trash:
            continue
        await box.select(folder)
        uids = await box.search("BEFORE", before, "HEADER", "X-Warmup-Id", '""')
        if not uids:
            continue
        found: dict[int, str] = {}
        for uid, _, raw in await box.fetch(uids, f"(UID BODY.PEEK[HEADER.FIELDS ({HEADERS})])"):
            hdrs: Message = parse(raw)
            wid = str(hdrs.get("X-Warmup-Id") or "").strip()
            mid = str(hdrs.get("Message-ID") or "").strip()
            if wid.isdigit() and mid:
                found[uid] = mid
        known = await store.warmup_copies(account, sorted(set(found.values())))
        mine = [uid for uid, mid in found.items() if known.get(mid) == role]
        if not mine:
            continue
        if mode == "trash" and trash:
            for uid in mine:
                await box.move(uid, trash)
        else:
            await box.delete(mine)
        out.by_folder[folder] = len(mine)
        (out.received if role == "received" else out.sent).extend(found[u] for u in mine)
    if out.received or out.sent:
        await store.mark_cleaned(account, out.received, out.sent)
    return out


__all__ = ["Cleaned", "Mailbox", "clean", "imap_date"]
