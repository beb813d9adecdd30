#!/usr/bin/env bash
# Build seckill-proxy's image with podman (or docker), from the repository's root:
#   deploy/build-image.sh                 # FROM debian:bookworm-slim (a registry)
#   deploy/build-image.sh --debootstrap   # no registry: a bookworm base made with debootstrap
# TAG=seckill-proxy:0.1.0 by default. Podman on a host with hybrid cgroups (v1 + v2) and no
# CAP_SYS_RESOURCE (the development VM) needs runc, cgroupfs and ulimits at or below the
# host's: PODMAN_FLAGS below; set PODMAN_FLAGS="" where podman runs with its defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-seckill-proxy:0.1.0}
ENGINE=${ENGINE:-$(command -v podman || command -v docker)}
PODMAN_FLAGS=${PODMAN_FLAGS---runtime runc --cgroup-manager cgroupfs}
BUILD_FLAGS=(--network host)
[[ "$ENGINE" == *podman ]] && BUILD_FLAGS+=(--format docker)  # keeps HEALTHCHECK (OCI has none)
[[ "$ENGINE" == *podman ]] && BUILD_FLAGS+=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
BASE=debian:bookworm-slim
if [ "${1:-}" = "--debootstrap" ]; then
  BASE=localhost/debian-bookworm-base:latest
  if ! $ENGINE image exists "$BASE" 2>/dev/null; then
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | $ENGINE import - "$BASE"
    rm -rf "$root"
  fi
fi
# extra CAs of this host (a TLS-inspecting proxy in front of PyPI) for pip, as a build secret
ca=$(mktemp); trap 'rm -f "$ca"' EXIT
cat /usr/local/share/ca-certificates/*.crt > "$ca" 2>/dev/null || true
# shellcheck disable=SC2086
$ENGINE $PODMAN_FLAGS build "${BUILD_FLAGS[@]}" --secret id=pip_ca,src="$ca" \
  --build-arg BASE="$BASE" -f deploy/Dockerfile -t "$TAG" .
