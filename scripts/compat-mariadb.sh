#!/usr/bin/env bash
# MariaDB Connector/Python's own test suite directly against MariaDB and through the proxy
# (see compat_mariadb.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/compat_mariadb.py "$@"
