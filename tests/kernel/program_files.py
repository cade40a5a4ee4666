"""Where the program tests' fixture files and the shipped examples are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data" / "programs"
GOOD = DATA / "good"
BROKEN = DATA / "broken"
SKILLS = DATA / "skills"
EXAMPLES = ROOT / "examples"
