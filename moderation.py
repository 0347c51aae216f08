"""Whom admins have muted, with no sockets and no lock of its own: the
room (``room.py``) uses it with its lock held. (Bans are by address, so
they live with the other per-address rules, in ``guard.py``.)

A mute is kept by nickname key (``protocol.nick_key``), so that leaving and
joining again under the same name does not lift it. Simplification: a user
who comes back muted under another nickname is not muted; an admin can ban
them.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, NamedTuple, Optional


class Mute(NamedTuple):
    """One mute. ``until`` is on the mutes' clock; None means until an
    admin lifts it (or the server stops)."""

    key: str       # the muted nickname's key
    nick: str      # whom it was given to, as they were called
    admin: str     # who gave it
    until: Optional[float]


class Mutes:
    """Mutes by nickname key, each lifted by an admin or by time. Memory:
    one entry per mute an admin gave, dropped when found to be over.

    ``clock`` is monotonic seconds (replaceable in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._given: Dict[str, Mute] = {}

    def give(self, key: str, nick: str, admin: str,
             minutes: Optional[float] = None) -> Mute:
        """Mute ``key`` for ``minutes`` (None: until lifted); a new mute
        replaces an older one on the same key."""
        until = None if minutes is None else self._clock() + minutes * 60
        mute = Mute(key, nick, admin, until)
        self._given[key] = mute
        return mute

    def find(self, key: str) -> Optional[Mute]:
        """The mute on ``key`` still in force, or None."""
        mute = self._given.get(key)
        if mute is not None and mute.until is not None \
                and mute.until <= self._clock():
            del self._given[key]
            return None
        return mute

    def lift(self, key: str) -> Optional[Mute]:
        """Lift the mute on ``key``; the mute lifted, or None if there was
        none in force."""
        mute = self.find(key)
        if mute is not None:
            del self._given[key]
        return mute

    def seconds_left(self, mute: Mute) -> Optional[float]:
        """How long ``mute`` still lasts; None for until lifted."""
        if mute.until is None:
            return None
        return max(mute.until - self._clock(), 0.0)
