#!/usr/bin/env bash
# Install what the test suite needs besides Python packages, at set-up time (never `npx -y` in a
# test):
#
# - bubblewrap (`bwrap`, Debian package bubblewrap), the python and shell devices' sandbox,
#   with apt-get when it is missing and we are root (otherwise a message; the devices refuse
#   to run without it);
# - chromium (Debian package chromium), the headless browser the web console's end-to-end tests
#   drive through Playwright (never a browser download), the same way;
# - tuser, a second, unprivileged OS user that the security tests act as (another user on a
#   shared machine), with useradd when it is missing and we are root;
# - mcp-server-time (PyPI) into the current Python environment;
# - @modelcontextprotocol/server-everything and server-filesystem (npm) into
#   <repo>/.mcp-servers (gitignored), where tests/test_mcp.py looks for them.
#
# Idempotent and quick when everything is already there. Without npm, the npm servers are
# skipped with a message (the tests that need them skip too); exit status is 0 either way
# unless an install that was attempted fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        # A fresh machine's package lists may be missing or stale: update once, then retry.
        apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }
    else
        echo "install-test-servers: bwrap not found; install the Debian package bubblewrap" >&2
    fi
fi

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }
    else
        echo "install-test-servers: chromium not found; install the Debian package chromium" >&2
    fi
fi

if ! id tuser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v useradd >/dev/null 2>&1; then
        useradd --create-home --shell /bin/sh tuser
    else
        echo "install-test-servers: no user tuser; the tests that act as a second user need it" >&2
    fi
fi

TIME_VERSION="2026.10.19"
EVERYTHING_VERSION="2026.8.31"
FILESYSTEM_VERSION="2026.8.31"
PREFIX=".mcp-servers"

have_time="$(python3 - "$TIME_VERSION" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print("yes" if version("mcp-server-time") == sys.argv[1] else "no")
except PackageNotFoundError:
    print("no")
PY
)"
if [ "$have_time" != "yes" ]; then
    python3 -m pip install -q "mcp-server-time==${TIME_VERSION}"
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-test-servers: npm not found; skipping the npm MCP servers" >&2
    exit 0
fi

installed_version() {  # the version of npm package $1 under $PREFIX, or nothing
    local manifest="$PREFIX/node_modules/$1/package.json"
    [ -f "$manifest" ] || return 0
    [ -f "$PREFIX/node_modules/$1/dist/index.js" ] || return 0  # an incomplete install
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$PWD/$manifest"
}

wanted=()
if [ "$(installed_version @modelcontextprotocol/server-everything)" != "$EVERYTHING_VERSION" ]; then
    wanted+=("@modelcontextprotocol/server-everything@${EVERYTHING_VERSION}")
fi
if [ "$(installed_version @modelcontextprotocol/server-filesystem)" != "$FILESYSTEM_VERSION" ]; then
    wanted+=("@modelcontextprotocol/server-filesystem@${FILESYSTEM_VERSION}")
fi
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error --save-exact \
        "${wanted[@]}"
fi

# A package directory without its dist/ (copied or restored incompletely) is not a server:
# check the entry points and reinstall from the registry once if one is missing.
complete() {
    [ -f "$PREFIX/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ] &&
        [ -f "$PREFIX/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" ]
}
if ! complete; then
    rm -rf "$PREFIX/node_modules"
    npm cache verify >/dev/null 2>&1 || true
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error --save-exact \
        --prefer-online \
        "@modelcontextprotocol/server-everything@${EVERYTHING_VERSION}" \
        "@modelcontextprotocol/server-filesystem@${FILESYSTEM_VERSION}"
    complete || { echo "install-test-servers: npm installed incomplete MCP servers" >&2; exit 1; }
fi
