"""The PostgreSQL run gives the parser and validator unit tests no database (tests/conftest.py,
STORE_FREE_DIRECTORIES): this keeps that true as tests are added, so none of them quietly runs on
SQLite in the PostgreSQL run."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import STORE_FREE_DIRECTORIES, STORE_USING_FILES

MAKES_A_GATEWAY = re.compile(r"create_app|Gateway\.from_config|make_engine|gateway\.cli|subprocess|"
                             r"def test_\w+\([^)]*\b(app|client|gateway|client_as|anonymous_client|both_stores_app)\b")


def test_the_store_free_directories_make_no_gateway():
    tests = Path(__file__).parent
    offenders = [str(path.relative_to(tests)) for directory in STORE_FREE_DIRECTORIES
                 for path in sorted((tests / directory).glob("*.py"))
                 if path.name not in STORE_USING_FILES and MAKES_A_GATEWAY.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
