#!/usr/bin/env bash
# MariaDB's mysql-test main suite directly and through the proxy (see compat_mtr.py).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perl >/dev/null 2>&1 && [ -d /usr/share/mysql/mysql-test ] || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mariadb-test perl >/dev/null
}
exec .venv/bin/python scripts/compat_mtr.py "$@"
