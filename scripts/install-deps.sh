#!/usr/bin/env bash
# Installs what the proxy, its tests and benchmarks need: Debian packages (when missing) and a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
if [ "${WITH_BENCH:-0}" = 1 ] || [ "${WITH_TEST:-0}" = 1 ]; then
  command -v sysbench >/dev/null 2>&1 || need+=(sysbench)
fi
if [ "${WITH_TEST:-0}" = 1 ]; then
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v tmux >/dev/null 2>&1 || need+=(tmux)
  # MariaDB Connector/Python (the tests' MariaDB-native driver) builds against libmariadb
  command -v mariadb_config >/dev/null 2>&1 || need+=(libmariadb-dev)
fi
# mypyc compiles the hot modules (proxy/compiled.py): a C compiler and Python's headers
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || need+=(python3-dev)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian's package may start a system server; the proxy uses its own sandbox servers.
  $SUDO pkill -x mariadbd 2>/dev/null || true
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstalled (and the hot modules recompiled) when the project or a compiled module changes.
stamp=.venv/.installed-$(cat pyproject.toml setup.py $(python3 proxy/compiled.py) | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  if ! .venv/bin/pip install -q -e '.[test]'; then
    echo "install-deps: compiling the hot modules failed; installing them as plain Python" >&2
    SECKILL_PURE_PYTHON=1 .venv/bin/pip install -q -e '.[test]'
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
