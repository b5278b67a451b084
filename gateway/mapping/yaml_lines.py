"""Mapping files read with their line numbers, so that every mistake in one is ``file:line: message``.

A mapping author never sees a Python traceback (``../shared/style.md``): the engine checks a file
when it loads and names the row at fault. YAML's parser knows where each node starts; the plain
loader throws that away. Here every mapping (YAML ``{...}``) loads as a :class:`LinedDict`, a dict
that also remembers its own line and the line of each of its keys. Nothing else changes: the same
safe loader (libyaml when present), the same values, anchors and aliases.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.yamlfile import SafeLoader


class LinedDict(dict):
    """A YAML mapping that knows where it was written: ``line`` (its first key) and ``lines[key]``."""
    line: int | None = None
    lines: dict[Any, int] = {}


class _LinedLoader(SafeLoader):     # type: ignore[misc, valid-type]
    """The safe loader, building LinedDicts."""


def _construct_lined_mapping(loader: _LinedLoader, node: yaml.MappingNode):
    data = LinedDict()
    data.line = node.start_mark.line + 1
    data.lines = {}
    yield data
    data.update(loader.construct_mapping(node))     # flattens merge keys (<<) as the safe loader does
    for key_node, _value in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            data.lines.setdefault(loader.construct_object(key_node), key_node.start_mark.line + 1)


_LinedLoader.add_constructor("tag:yaml.org,2002:map", _construct_lined_mapping)


def load_lined_yaml(path: str | Path) -> Any:
    """The document in ``path`` (UTF-8) with line numbers on its mappings; a YAML syntax error is a
    ValueError saying ``file:line: ...``."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LinedLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path.name}{line}: not valid YAML: {exc.problem or exc.context}") from None


def line_of(node: Any, key: Any = None) -> int | None:
    """The line of ``key`` in a LinedDict (of the mapping itself without a key); None when unknown."""
    if key is None:
        return getattr(node, "line", None)
    lines = getattr(node, "lines", None)
    return lines.get(key) if lines else getattr(node, "line", None)
