"""The rate limiter's in-process storage, safe under waitress's threads.

limits' ``MemoryStorage`` (limits 5.8.0, the newest release) restarts its expiry timer on every hit
when it finds it stopped, without a lock: two requests finding it stopped at the same moment both
call ``start()`` on the one Timer, and the second answers HTTP 500 ("threads can only be started
once"). It showed as one 500 in 2,400 HL7 messages at eight concurrent clients. The fix upstream
(alisaifee/limits#352, which puts that restart under a lock) is not in a release yet; this storage
does the same until it is. With ``REDIS_URL`` set, the limiter uses Redis and this is not used.
"""
from __future__ import annotations

import threading

from limits.storage import MemoryStorage

SCHEME = "gateway-memory"


class ThreadSafeMemoryStorage(MemoryStorage):
    """``MemoryStorage`` whose expiry timer is started by one thread at a time."""

    STORAGE_SCHEME = [SCHEME]          # registered with limits by its metaclass: "gateway-memory://"

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        self._timer_lock = threading.Lock()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def _MemoryStorage__schedule_expiry(self) -> None:    # MemoryStorage's private __schedule_expiry
        with self._timer_lock:
            MemoryStorage._MemoryStorage__schedule_expiry(self)
