"""The layers hold: imports point inward (front ends -> kernel -> hardware and stores -> base).

The contract is `[tool.importlinter]` in pyproject.toml (import-linter); lazy imports inside
functions and imports under TYPE_CHECKING count. A module that imports against the layers fails
this test with import-linter's report of the offending lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_inward() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout
