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
  # mysqlclient (Django's MySQL driver, tests/test_tracked_writes.py) finds it with pkg-config
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
fi
# mypyc compiles the hot modules (proxy/compiled.py): a C compiler and Python's headers
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || need+=(python3-dev)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # Debian's packages would start a system server; the proxy uses its own sandbox servers.
  # policy-rc.d answering 101 ("action forbidden") keeps the package from starting one, so no
  # server is killed afterwards (a developer's own servers are left alone).
  policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
  [ "$policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$status" = 0 ] || exit "$status"
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstalled (and the hot modules recompiled) when the project or a compiled module changes.
# Running needs the package alone; tests and benchmarks add the test extras.
extras=""
if [ "${WITH_BENCH:-0}" = 1 ] || [ "${WITH_TEST:-0}" = 1 ]; then extras="[test]"; fi
stamp=.venv/.installed-$( (cat pyproject.toml setup.py $(python3 proxy/compiled.py); echo "$extras") | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ] && [ -z "$extras" ] && ls .venv/.installed-* >/dev/null 2>&1 \
    && .venv/bin/python -c 'import proxy, pytest' 2>/dev/null \
    && [ -f ".venv/.installed-$( (cat pyproject.toml setup.py $(python3 proxy/compiled.py); echo "[test]") | sha1sum | cut -c1-12)" ]; then
  exit 0  # the test install of this very source is there: it runs the proxy too
fi
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  if ! .venv/bin/pip install -q -e ".$extras"; then
    echo "install-deps: compiling the hot modules failed; installing them as plain Python" >&2
    SECKILL_PURE_PYTHON=1 .venv/bin/pip install -q -e ".$extras"
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
