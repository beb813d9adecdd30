#!/usr/bin/env bash
# mysqlclient's own test suite directly against MariaDB and through the proxy
# (see compat_mysqlclient.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/compat_mysqlclient.py "$@"
