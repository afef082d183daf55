#!/usr/bin/env bash
# Start a private Docker engine for the tests and import a small busybox image into it.
#
# Installs Debian's docker.io and busybox-static when missing, starts dockerd with its own
# data dir, socket and pid file (no iptables, no bridge: the tests need no network), waits
# until it answers, and imports bulkjobs-busybox:test built from the static busybox with
# relative symlinks. Idempotent: an engine already up is reused. Prints the DOCKER_HOST.
set -euo pipefail

STATE=${BULKJOBS_DOCKER_STATE:-/tmp/bulkjobs-docker}
SOCKET="$STATE/docker.sock"
export DOCKER_HOST="unix://$SOCKET"
IMAGE=bulkjobs-busybox:test

need() { command -v "$1" >/dev/null 2>&1; }

if ! need dockerd || ! dpkg -s busybox-static >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null
fi

mkdir -p "$STATE"
if ! docker version >/dev/null 2>&1; then
  dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" -H "$DOCKER_HOST" \
    --pidfile "$STATE/docker.pid" --iptables=false --ip-forward=false --bridge=none \
    >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker version >/dev/null 2>&1; then
    echo "dockerd did not start; its log:" >&2
    tail -30 "$STATE/dockerd.log" >&2
    exit 1
  fi
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  ROOTFS=$(mktemp -d)
  mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/proc" "$ROOTFS/dev" "$ROOTFS/sys" "$ROOTFS/etc"
  cp /bin/busybox "$ROOTFS/bin/busybox"
  for tool in sh echo cat sleep head tail yes true false ls env printf dd wc tr sed grep seq id; do
    ln -s busybox "$ROOTFS/bin/$tool"
  done
  tar -C "$ROOTFS" -c . | docker import --change 'ENV PATH=/bin' - "$IMAGE" >/dev/null
  rm -rf "$ROOTFS"
fi

echo "$DOCKER_HOST"
