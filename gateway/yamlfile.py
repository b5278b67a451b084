"""YAML configuration files (mappings, tables, search parameters) read with libyaml when it is there.

Every app start reads about 15 such files; the pure-Python loader spent about 0.7 s of each start on
them, libyaml's ``CSafeLoader`` (same safe subset, same results) a fraction of that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path) -> Any:
    """The document in ``path`` (UTF-8), loaded with the safe loader."""
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=SafeLoader)  # noqa: S506 - a safe loader
