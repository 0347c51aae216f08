"""What client.py knows of who is online, and Tab completion from it.

* :class:`Roster`: the nicknames online, as the server's lines tell them
  (the users line, joins, departures, kicks, bans and nickname changes).
  A room of thousands lists only its first names on joining; the others
  come in as they join or speak, which is all completion needs.
* :class:`Completer`: completes the word before the cursor: a command's
  flag at the start of a line, otherwise a nickname; case-insensitively,
  Unicode included (``заха`` completes ``Захар``). It is readline's
  completer function, and knows nothing of readline itself.

Both are used from two threads (the reader thread updates the roster while
readline, in the main thread, completes), so the roster has a lock.
"""

from __future__ import annotations

import threading
import unicodedata
from typing import Dict, Iterable, List, Optional

import protocol

#: Nicknames the roster keeps at most (a huge room must not grow it
#: without end); past that, new names replace none.
MAX_ROSTER = 10000


def fold(text: str) -> str:
    """The form words are compared in for completion and the client's own
    lists: NFKC and case folded. Not ``protocol.nick_key``: its look-alike
    skeleton (``rn`` is ``m``) would make ``ar`` no prefix of
    ``arnold``."""
    return unicodedata.normalize("NFKC", text).casefold()


class Roster:
    """The nicknames online, by :func:`fold`-ed key, as last written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nicks: Dict[str, str] = {}

    def note(self, line: str) -> None:
        """Take in one server line (lines that say nothing of who is
        online change nothing)."""
        change = protocol.nick_change(line)
        seen = protocol.presence(line) if change is None else None
        if change is None and seen is None:
            return
        with self._lock:
            if change is not None:
                old, new = change
                if old:  # "" is our own change: the welcome listed us
                    self._nicks.pop(fold(old), None)
                self._add(new)
                return
            kind, nicks = seen  # type: ignore[misc]
            if kind == "online":
                self._nicks.clear()
            for nick in nicks:
                if kind == "left":
                    self._nicks.pop(fold(nick), None)
                else:
                    self._add(nick)

    def add(self, nick: str) -> None:
        """Someone is online (they spoke, say)."""
        with self._lock:
            self._add(nick)

    def _add(self, nick: str) -> None:
        if len(self._nicks) < MAX_ROSTER or fold(nick) in self._nicks:
            self._nicks[fold(nick)] = nick

    def nicks(self) -> List[str]:
        with self._lock:
            return list(self._nicks.values())


def command_flags() -> List[str]:
    """The flags a line can start with, from the command table."""
    return sorted(spec.flag for spec in protocol.COMMANDS
                  if spec.flag.startswith("-"))


class Completer:
    """readline's completer: ``complete(text, index)`` gives the
    ``index``-th word that completes ``text``, then None.

    ``line_start()`` says whether the word being completed starts the line
    (readline's ``get_begidx() == 0``); there a word starting with ``-``
    is a command flag. ``extra_flags`` are flags the client answers itself.
    """

    def __init__(self, roster: Roster, line_start,
                 extra_flags: Iterable[str] = ()) -> None:
        self._roster = roster
        self._line_start = line_start
        self._flags = sorted(set(command_flags()) | set(extra_flags))
        self._matches: List[str] = []

    def matches(self, text: str, at_start: bool) -> List[str]:
        """Every completion of ``text``, each followed by a space."""
        if at_start and text.startswith("-"):
            words = self._flags
        else:
            words = sorted(self._roster.nicks(), key=fold)
        prefix = fold(text)
        return [word + " " for word in words
                if fold(word).startswith(prefix)]

    def complete(self, text: str, index: int) -> Optional[str]:
        if index == 0:
            self._matches = self.matches(text, self._line_start())
        return self._matches[index] if index < len(self._matches) else None
