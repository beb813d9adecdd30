#!/usr/bin/env bash
# PyMySQL's own test suite directly against MariaDB and through the proxy (see compat_pymysql.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/compat_pymysql.py "$@"
