#!/usr/bin/env bash
# Build the image with podman and smoke-test the container: `make image` (build only), `make image-check`.
#   scripts/image_check.sh [--build-only]
# Needs root (rootful podman). Installs podman, runc and mmdebstrap with apt-get when they are missing.
# No registry serves base images on the build machines this runs on, so the FROM image
# (debian:bookworm-slim) is made from Debian's own packages with mmdebstrap's minbase variant, which is
# what the -slim images hold, and imported under that name. A base that is already there is reused.
# A built image stays (a rebuild takes seconds from its cached layers): `podman rmi ddpm-demo` frees it.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ddpm-demo:latest}
BASE=docker.io/library/debian:bookworm-slim
HOST_CA=/etc/ssl/certs/ca-certificates.crt
STOP_GRACE_S=10  # docker's and podman's default before SIGKILL
WORK=$(mktemp -d)
CONTAINERS=()

say() { printf '[image-check] %s\n' "$*"; }
fail() { printf '[image-check] FAIL: %s\n' "$*" >&2; exit 1; }

# Podman logs an error each time it cannot reach systemd to put a container's HEALTHCHECK on a timer; the check
# runs the HEALTHCHECK itself (check_healthcheck), so those lines are noise.
without_systemd_noise() { "$@" 2> >(grep -v 'systemd connection\|Removing timer' >&2); }

cleanup() {
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  wait  # for the noise filters' subshells
  rm -rf "$WORK"
}
trap cleanup EXIT

install_tools() {
  local missing=()
  for tool in podman runc mmdebstrap curl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Podman's defaults ask for ulimits above these machines' hard limits, and crun refuses their hybrid
# cgroup layout; a containers.conf of our own fixes both without touching /etc.
configure_podman() {
  cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  export CONTAINERS_CONF="$WORK/containers.conf"
}

make_base() {
  if podman image exists "$BASE"; then
    say "base $BASE: present"
    return
  fi
  say "base $BASE: making it with mmdebstrap (minbase, bookworm)"
  mmdebstrap --quiet --variant=minbase bookworm "$WORK/base.tar" http://deb.debian.org/debian
  podman import --quiet "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
}

build() {
  local secret=()
  # PyPI may be reached through a TLS proxy whose CA only the host trusts: pip gets the host bundle as a
  # build secret, which is mounted for the one RUN that needs it and never stored in a layer.
  [ -f "$HOST_CA" ] && secret=(--secret "id=pip_ca,src=$HOST_CA")
  say "building $IMAGE"
  local t0=$SECONDS
  # --format docker keeps the HEALTHCHECK, which the OCI image format has no field for.
  podman build --quiet --format docker "${secret[@]}" -t "$IMAGE" . >/dev/null
  say "built in $((SECONDS - t0)) s; $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec) in" \
      "$(podman image inspect --format '{{len .RootFS.Layers}}' "$IMAGE") layers"
}

# ---------------------------------------------------------------------------------------------- checks
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_container() {  # run_container NAME HOST_PORT CONTAINER_PORT [podman run args...]
  local name=$1 hport=$2 cport=$3; shift 3
  CONTAINERS+=("$name")
  without_systemd_noise podman run -d --name "$name" -p "127.0.0.1:$hport:$cport" "$@" "$IMAGE" >/dev/null
}

wait_ready() {  # wait_ready NAME URL
  local name=$1 url=$2 deadline=$((SECONDS + 120))
  until curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; do
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || fail "$name exited: $(podman logs "$name" 2>&1 | tail -5)"
    [ $SECONDS -lt $deadline ] || fail "$name: /readyz not ready after 120 s"
    sleep 0.5
  done
}

check_healthcheck() {  # the image's own HEALTHCHECK command, run once: podman has no timer without systemd
  local name=$1
  [ -n "$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE" | grep -v '<nil>')" ] \
    || fail "the image has no HEALTHCHECK"
  podman healthcheck run "$name" >/dev/null || fail "$name: HEALTHCHECK failed: $(podman logs "$name" 2>&1 | tail -3)"
}

check_serves() {
  local name=ddpm-check-serve port
  port=$(free_port)
  run_container "$name" "$port" 8000
  local url=http://127.0.0.1:$port t0=$SECONDS
  wait_ready "$name" "$url"
  say "/readyz ready $((SECONDS - t0)) s after start"
  [[ "$(curl -fsS "$url/")" == *"<html"* ]] || fail "/ is not the page"
  curl -fsS -X POST -H 'Content-Type: application/json' -H 'Accept: image/png' \
    -d '{"n": 1, "steps": 2, "seed": 0}' -o "$WORK/sample.png" "$url/api/v1/samples" || fail "POST /api/v1/samples"
  [ "$(head -c 8 "$WORK/sample.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "/samples: not a PNG"
  say "/, /readyz and a /samples PNG answer"
  check_healthcheck "$name"
  say "HEALTHCHECK passes"
  local pid uid
  pid=$(podman inspect --format '{{.State.Pid}}' "$name")
  uid=$(stat -c %u "/proc/$pid")
  [ "$uid" != 0 ] || fail "the server runs as root"
  say "the server runs as uid $uid"
  local start=$EPOCHREALTIME took code
  without_systemd_noise podman stop -t 30 "$name" >/dev/null
  took=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }")
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || fail "SIGTERM: exit code $code (137 means it was killed)"
  awk "BEGIN { exit !($took < $STOP_GRACE_S) }" || fail "SIGTERM: took $took s, past the $STOP_GRACE_S s grace"
  say "SIGTERM stops it in $took s (grace $STOP_GRACE_S s), exit code 0"
}

check_port() {
  local name=ddpm-check-port port
  port=$(free_port)
  run_container "$name" "$port" 9000 -e DDPM_PORT=9000
  wait_ready "$name" "http://127.0.0.1:$port"
  check_healthcheck "$name"
  say "DDPM_PORT=9000: served on 9000, HEALTHCHECK passes"
}

check_host() {  # bound to the container's loopback: healthy inside, unreachable through the published port
  local name=ddpm-check-host port
  port=$(free_port)
  run_container "$name" "$port" 8000 -e DDPM_HOST=127.0.0.1
  local deadline=$((SECONDS + 120))
  until podman healthcheck run "$name" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "DDPM_HOST=127.0.0.1: never healthy: $(podman logs "$name" 2>&1 | tail -3)"
    sleep 0.5
  done
  [[ "$(podman logs "$name" 2>&1)" == *"on http://127.0.0.1:8000"* ]] || fail "DDPM_HOST=127.0.0.1: not in the log"
  if curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$port/readyz" 2>/dev/null; then
    fail "DDPM_HOST=127.0.0.1: still reachable from outside the container"
  fi
  say "DDPM_HOST=127.0.0.1: bound to the container's loopback only, HEALTHCHECK passes"
}

check_bad_model() {
  local name=ddpm-check-model out code
  CONTAINERS+=("$name")
  without_systemd_noise podman run -d --name "$name" -e DDPM_MODEL=/nonexistent.safetensors "$IMAGE" >/dev/null
  code=$(podman wait "$name")
  out=$(podman logs "$name" 2>&1)
  [ "$code" != 0 ] || fail "a bad DDPM_MODEL started the server"
  [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "a bad DDPM_MODEL: expected one line, got: $out"
  say "a bad DDPM_MODEL fails with exit $code and one line: $out"
}

install_tools
configure_podman
make_base
build
[ "${1:-}" = --build-only ] && exit 0
check_serves
check_port
check_host
check_bad_model
say "all checks passed"
