"""llmos.hw.cpu sets how llama.cpp's OpenMP threads wait, unless the environment already does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmos import params

PROBE = (
    "import os, sys\n"
    "import llmos.hw.cpu.engine\n"
    "assert 'llama_cpp' in sys.modules\n"
    "print(os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('OMP_WAIT_POLICY', '-'))\n"
)


def probe(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def test_spin_count_set_when_the_environment_says_nothing() -> None:
    assert probe() == f"{params.OMP_SPIN_COUNT} -"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({"GOMP_SPINCOUNT": "5"}, "5 -"), ({"OMP_WAIT_POLICY": "passive"}, "- passive")],
)
def test_the_environment_wins(extra: dict[str, str], expected: str) -> None:
    assert probe(**extra) == expected
