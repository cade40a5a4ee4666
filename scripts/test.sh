#!/usr/bin/env bash
# Install llmos with its test dependencies, then run the whole suite: ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
bash scripts/install-test-servers.sh
python3 -m ruff check llmos tests bench
python3 -m ruff format --check llmos tests bench
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
