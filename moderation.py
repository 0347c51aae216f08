"""Whom admins have muted, with no sockets and no lock of its own:
the room (``room.py``) uses it with its lock held. (Bans are by address,
so they live with the other per-address rules, in ``guard.py``.)

* :class:`Sanctions`: who is sanctioned, by whom, why, and until when; an
  entry lifts itself when its time is up.

A mute is kept by nickname key (``protocol.nick_key``), so that leaving and
joining again under the same name does not lift it. Simplification: a user
who comes back muted under another nickname is not muted; an admin can ban
them.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, NamedTuple, Optional


class Sanction(NamedTuple):
    """One sanction (a mute). ``until`` is on the sanctions' clock; None
    means until an admin lifts it (or the server stops)."""

    key: str       # the muted nickname's key
    nick: str      # whom it was given to, as they were called
    admin: str     # who gave it
    reason: str
    until: Optional[float]


class Sanctions:
    """Sanctions by key, each lifted by an admin or by time.

    ``clock`` is monotonic seconds (replaceable in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._given: Dict[str, Sanction] = {}

    def give(self, key: str, nick: str, admin: str,
             minutes: Optional[float] = None, reason: str = "") -> Sanction:
        """Sanction ``key`` for ``minutes`` (None: until lifted); a new
        sanction replaces an older one on the same key."""
        until = None if minutes is None else self._clock() + minutes * 60
        sanction = Sanction(key, nick, admin, reason, until)
        self._given[key] = sanction
        return sanction

    def find(self, key: str) -> Optional[Sanction]:
        """The sanction on ``key`` still in force, or None."""
        sanction = self._given.get(key)
        if sanction is not None and sanction.until is not None \
                and sanction.until <= self._clock():
            del self._given[key]
            return None
        return sanction

    def lift(self, key: str) -> Optional[Sanction]:
        """Lift the sanction on ``key``; the sanction lifted, or None if
        there was none in force."""
        sanction = self.find(key)
        if sanction is not None:
            del self._given[key]
        return sanction

    def seconds_left(self, sanction: Sanction) -> Optional[float]:
        """How long ``sanction`` still lasts; None for until lifted."""
        if sanction.until is None:
            return None
        return max(sanction.until - self._clock(), 0.0)

    def in_force(self) -> List[Sanction]:
        """Every sanction still in force, oldest first."""
        return [sanction for sanction in list(self._given.values())
                if self.find(sanction.key) is not None]

    def __len__(self) -> int:
        return len(self.in_force())
