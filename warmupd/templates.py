"""A built-in bank of human-looking subjects and bodies; no links, no images, no tracking.

Users can point ``templates = "path"`` at their own file: blocks separated by a
line ``---``, each block a ``Subject: ...`` line, a blank line and the body.
``{first}`` is replaced by the recipient's first name, ``{me}`` by the sender's.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

SUBJECTS = [
    "Quick question about next week", "Following up on our chat", "Thoughts on the draft?",
    "Lunch on Thursday?", "Notes from today", "Can we move our call?", "Small update",
    "That article you mentioned", "Re-checking the numbers", "Plans for the offsite",
    "Are you around tomorrow?", "One more idea", "Feedback on the proposal", "Catching up",
    "Timeline for the project", "The list we talked about", "Coffee sometime this week?",
    "A quick thank you", "Agenda for Monday", "Checking in", "Book recommendation",
    "About the workshop", "Minor change to the plan", "Did you get a chance to look?",
]
OPENINGS = [
    "Hi {first},", "Hello {first},", "Hey {first},", "Good morning {first},", "{first},",
    "Hi there {first},", "Dear {first},",
]
BODIES = [
    "I was going through my notes from earlier and wanted to check one thing with you. "
    "Do you still think the second option is the better one? No rush at all.",
    "Just wanted to say thanks for the help last week. It made a real difference and "
    "the team noticed too.",
    "Could we push our call to later in the afternoon? Something came up in the morning "
    "and I would rather not rush it.",
    "I read the draft over the weekend. Overall it reads well; I left a few small comments "
    "on the second section, mostly wording.",
    "Are you free for a short chat tomorrow? I have a couple of questions about the plan "
    "and it is probably faster to talk them through.",
    "Following up on what we discussed. I put together a short list of next steps and "
    "will share it once I have cleaned it up a bit.",
    "I came across that book you mentioned and finally started it. You were right, the "
    "first chapters are great.",
    "Quick update: the numbers look better than we expected, though I want to double "
    "check a few of them before we share anything.",
    "Would Thursday work for lunch? There is a new place near the office I have been "
    "meaning to try.",
    "I think we are mostly aligned on the timeline. The only open point is the review "
    "step, which might need an extra day.",
    "Hope your week is going well. Let me know when you have a moment to go over the "
    "agenda for Monday.",
    "I moved things around a little in the plan so the workshop fits better. Tell me "
    "if that causes trouble on your side.",
]
CLOSINGS = ["Thanks,", "Best,", "Cheers,", "Talk soon,", "Kind regards,", "All the best,", "Thanks again,"]


def _first(addr: str) -> str:
    local = addr.partition("@")[0].split("+")[0]
    name = local.replace(".", " ").replace("_", " ").split(" ")[0]
    return name[:1].upper() + name[1:] if name else "there"


@lru_cache(maxsize=16)
def load_file(path: Path) -> tuple[tuple[str, str], ...]:
    """(subject, body) pairs from a user's template file (or every *.txt of a folder)."""
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    out: list[tuple[str, str]] = []
    for f in files:
        for block in f.read_text(encoding="utf-8").split("\n---"):
            block = block.strip("\n-")
            if not block.strip():
                continue
            head, _, body = block.partition("\n\n")
            subject = head.strip()
            if subject.lower().startswith("subject:"):
                subject = subject[8:].strip()
            out.append((subject, body.strip()))
    if not out:
        raise ValueError(f"{path}: no templates found (blocks of 'Subject: ...', blank line, body; separated by ---)")
    return tuple(out)


def first_name(display_name: str) -> str:
    """The first word of a display name ("Nora Lind" -> "Nora")."""
    words = display_name.replace('"', "").split()
    return words[0] if words else "there"


def compose(rng: random.Random, sender: str, recipient: str, templates: Path | None = None, *,
            sender_name: str | None = None, recipient_name: str | None = None) -> tuple[str, str]:
    """A (subject, plain-text body) pair; the greeting and the signature use the display
    names when given (else a name derived from the address)."""
    first = first_name(recipient_name) if recipient_name else _first(recipient)
    me = first_name(sender_name) if sender_name else _first(sender)
    if templates is not None:
        subject, body = rng.choice(load_file(templates))
        return subject.format(first=first, me=me), body.format(first=first, me=me)
    subject = rng.choice(SUBJECTS)
    parts = [rng.choice(OPENINGS).format(first=first), "", rng.choice(BODIES)]
    if rng.random() < 0.4:
        parts += ["", rng.choice(BODIES)]
    parts += ["", rng.choice(CLOSINGS), me]
    return subject, "\n".join(parts) + "\n"
