#!/usr/bin/env bash
# The extension links the system's shared libsqlite3 (the one Python's sqlite3 module uses; see the
# workspace Cargo.toml), found through pkg-config. Install both from Debian when missing.
set -euo pipefail
if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists 'sqlite3 >= 3.34.1'; then
    exit 0
fi
echo "installing pkg-config and libsqlite3-dev (needed to link the system SQLite)" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq pkg-config libsqlite3-dev >/dev/null
