"""The README's exit-code table covers every exit code an error class can give."""

from __future__ import annotations

import re
from pathlib import Path

from llmos.errors import EXIT_CODES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exit_code_is_in_the_readme_table() -> None:
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", README.read_text(), re.M)}
    missing = {name: code for name, code in EXIT_CODES.items() if code not in documented}
    assert not missing


def test_exit_codes_are_distinct_except_usage() -> None:
    codes = [c for c in EXIT_CODES.values() if c != 2]  # RequestError shares click's usage 2
    assert len(codes) == len(set(codes))
