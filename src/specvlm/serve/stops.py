"""`stop` strings, which the engine does not know: cut the text at the first one.

While streaming, the tail that could still grow into a stop string is held back, so no part of
a stop string is ever sent.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of `text` released so far
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what may be released now (nothing once stopped)."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation: the held-back tail was no stop string after all."""
        return "" if self.stopped else self._release(len(self.text))

    def _held_back(self) -> int:
        """The longest suffix of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent : end], end
        return out
