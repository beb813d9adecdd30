#!/usr/bin/env bash
# aiomysql's own test suite directly against MariaDB and through the proxy
# (see compat_aiomysql.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/compat_aiomysql.py "$@"
