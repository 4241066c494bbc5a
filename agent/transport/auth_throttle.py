"""Wrong page passwords, per address: slow guessing down without locking a technician out.

After ``allowed`` wrong passwords an address must wait before its next try: 1 s, doubling
with every further wrong try, up to ``max_wait_s``; a right password clears its record,
and a record is forgotten ``forget_s`` after its last wrong try. A guesser gets about 60
tries an hour; a technician who mistyped gets in a second later. The table is bounded:
past ``max_addresses`` the address that failed least recently is forgotten (clearing it
all would let many addresses wipe everyone's record).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    until: float = 0.0  # monotonic time before which the address must wait


class PasswordThrottle:
    """Per-address wrong-password counts and waits (event loop only)."""

    def __init__(
        self,
        *,
        allowed: int = 10,
        max_wait_s: float = 60.0,
        forget_s: float = 3600.0,
        max_addresses: int = 1024,
    ) -> None:
        self.allowed = allowed
        self.max_wait_s = max_wait_s
        self.forget_s = forget_s
        self.max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait_s(self, remote: str) -> float:
        """Seconds ``remote`` must still wait before its password is checked (0: none)."""
        record = self._records.get(remote)
        if record is None:
            return 0.0
        now = time.monotonic()
        if now - record.last > self.forget_s:
            del self._records[remote]
            return 0.0
        return max(0.0, record.until - now)

    def failed(self, remote: str) -> bool:
        """Count a wrong password; True when the address has just reached the limit."""
        now = time.monotonic()
        record = self._records.pop(remote, None) or _Record()
        if now - record.last > self.forget_s:
            record = _Record()
        record.failures += 1
        record.last = now
        over = record.failures - self.allowed
        if over >= 0:
            record.until = now + min(self.max_wait_s, 2.0**over)
        self._records[remote] = record  # most recent last
        while len(self._records) > self.max_addresses:
            self._records.popitem(last=False)
        return over == 0

    def succeeded(self, remote: str) -> None:
        """A right password: the address starts afresh."""
        self._records.pop(remote, None)
