"""Loaded once per process while the files stay as they are: the mapping set and its code systems.

Every ``create_app`` reads and checks the mapping directory (about 30 YAML documents, 120 ms); the
test suite makes a few thousand apps, and a process running several apps on one directory needs
the work once. The key is every YAML file's path, size and modification time, so an edited,
added or removed file is read again (``fhir-gateway mappings check`` and a restart after a
mapping fix see the new text). What is cached is only ever read after loading.
"""
from __future__ import annotations

import threading
from functools import wraps
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
_KEPT = 8


def _stamp(directory: Path) -> tuple:
    stamps = []
    for path in sorted(directory.glob("*.yaml")):
        stat = path.stat()
        stamps.append((path.name, stat.st_size, stat.st_mtime_ns))
    return (str(directory.resolve()), tuple(stamps))


def cached_while_files_unchanged(load: Callable[..., T]) -> Callable[..., T]:
    """``load(cls, directory)`` answered from memory while the directory's YAML files are unchanged;
    a load that raises is not remembered."""
    memory: dict[tuple, T] = {}
    lock = threading.Lock()

    @wraps(load)
    def cached(cls, directory):  # noqa: ANN001
        key = (cls, _stamp(Path(directory)))
        with lock:
            if key in memory:
                return memory[key]
        value = load(cls, directory)
        with lock:
            if len(memory) >= _KEPT:
                memory.clear()
            memory[key] = value
        return value

    return cached
