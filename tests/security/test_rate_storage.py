"""The rate limiter's in-process storage under concurrent requests (gateway/security/rate_storage.py)."""
from __future__ import annotations

import threading
import time

import pytest
from limits.storage import MemoryStorage

from gateway.security.rate_storage import ThreadSafeMemoryStorage

THREADS, ROUNDS = 8, 20


def _slow_to_store_its_timer(storage_class: type) -> type:
    """``storage_class`` with a pause after each new expiry timer is stored and before it is started:
    the gap where a second thread, finding the timer still stopped, stores its own, and both threads
    then start that one."""
    def stored(self):
        return self.__dict__["_timer"]

    def store(self, timer):
        self.__dict__["_timer"] = timer
        time.sleep(0.002)

    return type(f"Slow{storage_class.__name__}", (storage_class,), {"timer": property(stored, store)})


def _hit_together(storage) -> list[BaseException]:
    """THREADS threads hit at once, ROUNDS times, each time after the expiry timer has stopped."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def hit(index: int) -> None:
        for _ in range(ROUNDS):
            barrier.wait()
            try:
                storage.acquire_entry(f"client-{index}", 1_000_000, 60)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)
            barrier.wait()
            if index == 0:
                storage.timer.join()        # the timer has run: the next hits all find it stopped
            barrier.wait()

    workers = [threading.Thread(target=hit, args=(i,)) for i in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_hits_that_all_find_the_expiry_timer_stopped_start_one_timer_and_are_all_counted():
    storage = _slow_to_store_its_timer(ThreadSafeMemoryStorage)()
    storage.timer.join()
    assert _hit_together(storage) == []
    assert sum(len(events) for events in storage.events.values()) == THREADS * ROUNDS


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # its twice-started timers
def test_the_harness_catches_the_race_in_limits_own_memory_storage():
    """The test above can fail: limits 5.8.0's MemoryStorage raises under it. Once a limits release
    fixes its storage (alisaifee/limits#352) this skips, saying rate_storage.py can go."""
    storage = _slow_to_store_its_timer(MemoryStorage)()
    storage.timer.join()
    errors = _hit_together(storage)
    if not errors:
        pytest.skip("this limits release's MemoryStorage no longer starts one timer twice: "
                    "gateway/security/rate_storage.py can go, and memory:// be used again")
    assert all(isinstance(e, RuntimeError) and "started once" in str(e) for e in errors)


def test_the_gateway_limiter_uses_the_thread_safe_storage_without_redis(tmp_path):
    from gateway import create_app
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True})
    (limiter,) = app.extensions["limiter"]
    assert isinstance(limiter.storage, ThreadSafeMemoryStorage)
