"""Generated tokens to text, piece by piece, cut at the request's stop strings.

A token can end inside a multi-byte character (the decoded text then ends in U+FFFD) and a
stop string can span tokens, so a piece is sent only once it can no longer change: text
that could still be the start of a stop string, or an unfinished character, is held back.
The text of all pieces together is the text of the whole answer, whether streamed or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_UNFINISHED = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = tuple(stops)
        self._tokens: list[int] = []
        self._sent = 0  # characters of the text already handed out
        self.stopped = False  # a stop string was found: the answer ends before it
        self.text = ""  # the answer so far (after finish(): all of it)

    @property
    def token_count(self) -> int:
        """Tokens the answer used (up to the one that completed a stop string)."""
        return len(self._tokens)

    def add(self, token: int) -> str:
        """The new text that is safe to send after ``token`` ('' while held back or after a stop)."""
        if self.stopped:
            return ""
        self._tokens.append(token)
        full = self._decode(self._tokens)
        cut = self._stop_at(full)
        if cut is not None:
            self.stopped = True
            self.text = full[:cut]
            return self._release(len(self.text))
        self.text = full
        safe = len(full) - self._held_back(full)
        return self._release(max(safe, self._sent))

    def finish(self) -> str:
        """The rest of the text, once no token will come."""
        if not self.stopped:
            self.text = self._decode(self._tokens)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return piece

    def _stop_at(self, full: str) -> int | None:
        if not self._stops:
            return None
        longest = max(len(s) for s in self._stops)
        start = max(0, self._sent - longest)
        found = [i for s in self._stops if (i := full.find(s, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, full: str) -> int:
        """Characters at the end of ``full`` that may still change or start a stop string."""
        held = len(full) - len(full.rstrip(_UNFINISHED))
        if held:
            return held
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(full)), 0, -1):
                if full.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held
