"""Code-system names, identifier systems and HL7 table translations, read from ``mappings/*.yaml``.

Every place where a v2 code becomes a FHIR code goes through :class:`Terminology`, so there is one
answer to "where did M become male" (``mappings/tables.yaml``, table 0001).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.filecache import cached_while_files_unchanged
from gateway.yamlfile import load_yaml

_HL7_TABLE = re.compile(r"^HL7(\d{4})$")
V2_TABLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-{}"
_MEMO_LIMIT = 4096
_ALIAS_NOISE = re.compile(r"[\s_\-.]+")


def alias_key(name: str) -> str:
    """How an alias is matched: case, spaces, hyphens, underscores and dots aside
    (``SNOMED CT``, ``snomed-ct`` and ``SNOMEDCT`` are one name)."""
    return _ALIAS_NOISE.sub("", name).upper()


@dataclass
class Terminology:
    canonical_base: str
    local_base: str
    coding_systems: dict[str, str]
    identifier_authorities: dict[str, str]
    identifier_kinds: dict[str, str]
    kinds_not_in_0203: frozenset[str] = frozenset()     # no Identifier.type for these kinds
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)     # alias_key(alias) -> a coding_systems name
    _identifier_systems: dict[tuple[str, str, str, str], str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    @cached_while_files_unchanged
    def load(cls, mappings_dir: str | Path) -> "Terminology":
        mappings_dir = Path(mappings_dir)
        systems = load_yaml(mappings_dir / "code_systems.yaml")
        tables = load_yaml(mappings_dir / "tables.yaml")
        return cls(
            canonical_base=systems["canonical_base"].rstrip("/"),
            local_base=systems["local_base"].rstrip("/"),
            coding_systems=systems.get("coding_systems") or {},
            identifier_authorities=systems.get("identifier_authorities") or {},
            identifier_kinds=systems.get("identifier_kinds") or {},
            kinds_not_in_0203=frozenset(systems.get("identifier_kinds_not_in_0203") or ()),
            tables={str(k): v for k, v in (tables or {}).items()},
            aliases={alias_key(str(alias)): str(name) for alias, name in (systems.get("aliases") or {}).items()},
        )

    def coding_system(self, name: str) -> tuple[str, bool]:
        """FHIR system URI for a v2 coding-system name; the flag is False when the name is unknown."""
        uri = self.coding_systems.get(name)
        if uri:
            return uri, True
        canonical = self.aliases.get(alias_key(name)) if name else None    # MedDRA -> MDR, LOINC -> LN
        if canonical:
            uri = self.coding_systems.get(canonical)
            if uri:
                return uri, True
        match = _HL7_TABLE.match(name)
        if match:
            return V2_TABLE_SYSTEM.format(match.group(1)), True
        if name.startswith(("http://", "https://", "urn:")):
            return name, True
        return f"{self.local_base}/{name}", False

    def identifier_system(self, namespace: str, universal_id: str = "", universal_id_type: str = "",
                          kind: str = "") -> str | None:
        """System for an identifier issued by an assigning authority (an HD): an OID wins, then a
        fixed authority, then ``{base}/sid/<AUTHORITY>/<kind>``. None when there is no authority.

        Answers are remembered: a feed names a handful of authorities, over and over. The memo is
        bounded, since the names come from the messages."""
        key = (namespace, universal_id, universal_id_type, kind)
        memo = self._identifier_systems
        if key in memo:
            return memo[key]
        system = self._identifier_system(namespace, universal_id, universal_id_type, kind)
        if len(memo) < _MEMO_LIMIT:
            memo[key] = system
        return system

    def _identifier_system(self, namespace: str, universal_id: str, universal_id_type: str,
                           kind: str) -> str | None:
        if universal_id and universal_id_type.upper() in ("ISO", "OID"):
            return f"urn:oid:{universal_id}"
        if universal_id and universal_id_type.upper() in ("URI", "URL"):
            return universal_id
        if not namespace:
            return None
        fixed = self.identifier_authorities.get(namespace)
        if fixed:
            return fixed
        kind_path = self.identifier_kinds.get(kind) or self.identifier_kinds.get("DEFAULT", "id")
        return f"{self.canonical_base}/sid/{namespace}/{kind_path}"

    def translate(self, table: str, code: str) -> Any:
        """The FHIR value for ``code`` in HL7 table ``table``; None when the table has no row for it."""
        return self.tables.get(table, {}).get(code)
