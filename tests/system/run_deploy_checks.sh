#!/usr/bin/env bash
# CI: stt-agent deployed for real. The systemd service under a booted systemd (systemd-nspawn) and
# the container image built and run (Docker), both on one Debian 12 root made here by debootstrap.
# Each check prints PASS, or FAIL with the reason and stops; what this machine cannot do prints
# SKIP with the reason. Runs as root on a Debian/Ubuntu machine; installs what it needs with apt.
#
#   tests/system/run_deploy_checks.sh [--only systemd|container] [--keep] [--starts N] [--soak SECONDS] [--model DIR]
#
#   --only      run one of the two parts
#   --keep      keep the work directory, the images and the container root (debugging)
#   --starts N  systemd part: start the service N times, report the median time to READY (benchmarks)
#   --soak S    systemd part: feed speech for S seconds before stopping and report the RSS (benchmarks)
#   --model D   systemd part: this model directory instead of the tiny test model (benchmarks)
# Environment:
#   STT_DEPLOY_WORK    work directory (default /var/tmp/stt-agent-deploy; removed at the end)
#   STT_DEPLOY_CACHE   a directory that keeps the Debian root tarball between runs (default: none)
#   STT_DEPLOY_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   STT_DEPLOY_PYTHON  a Python with onnx for the tiny test model (default .venv/bin/python)
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ONLY="" KEEP=0 STARTS=1 SOAK=0 MODEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=${2:?--only needs systemd or container}; shift ;;
    --keep) KEEP=1 ;;
    --starts) STARTS=${2:?--starts needs a number}; shift ;;
    --soak) SOAK=${2:?--soak needs seconds}; shift ;;
    --model) MODEL=$(cd "${2:?--model needs a directory}" && pwd); shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_deploy_checks.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$ONLY" in ""|systemd|container) ;; *) echo "run_deploy_checks.sh: --only systemd or container" >&2; exit 2 ;; esac

WORK=${STT_DEPLOY_WORK:-/var/tmp/stt-agent-deploy}
CACHE=${STT_DEPLOY_CACHE:-}
MIRROR=${STT_DEPLOY_MIRROR:-http://deb.debian.org/debian}
PY=${STT_DEPLOY_PYTHON:-$REPO/.venv/bin/python}
T0=$(now)

if [ "$(uname -s)" != Linux ] || [ "$(id -u)" != 0 ]; then
  skip "deployment checks: they need root on Linux (systemd-nspawn, dockerd, debootstrap)"
  exit 0
fi
# apt names of the tools used here.
declare -A PKG=([debootstrap]=debootstrap [systemd-nspawn]=systemd-container [dockerd]=docker.io
                [mosquitto]=mosquitto [mosquitto_sub]=mosquitto-clients [espeak-ng]=espeak-ng)
missing=()
for tool in "${!PKG[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}"); done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  t=$(now)
  apt_log=/tmp/stt-agent-deploy-apt.log
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    > "$apt_log" 2>&1 || fail "apt-get install ${missing[*]} failed" "$apt_log"
  info "installed ${missing[*]} in $(since "$t") s"
fi
for tool in mosquitto mosquitto_sub espeak-ng debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || { skip "deployment checks: $tool is not installed and apt-get cannot install it"; exit 0; }
done
RUN_SYSTEMD=1 RUN_CONTAINER=1
[ "$ONLY" != container ] || RUN_SYSTEMD=0
[ "$ONLY" != systemd ] || RUN_CONTAINER=0
if [ "$RUN_SYSTEMD" = 1 ] && ! command -v systemd-nspawn >/dev/null 2>&1; then
  skip "systemd service checks: no systemd-nspawn (package systemd-container) on this machine"; RUN_SYSTEMD=0
fi
if [ "$RUN_CONTAINER" = 1 ] && ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  skip "container checks: no Docker engine (package docker.io) on this machine"; RUN_CONTAINER=0
fi
if [ -z "$MODEL" ] || [ "$RUN_CONTAINER" = 1 ]; then
  "$PY" -c 'import onnx' 2>/dev/null \
    || fail "$PY cannot import onnx (needed for the tiny test model): run bash scripts/setup.sh --cpu --test, or set STT_DEPLOY_PYTHON"
fi

cleanup() {
  local rc=$?
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"

# One Debian 12 root for both parts: booted by systemd-nspawn, imported as the image's base.
BASE=${CACHE:-$WORK}/debian-bookworm-minbase.tar
if [ -s "$BASE" ]; then
  pass "Debian 12 minbase root from the cache: $BASE"
else
  t=$(now)
  mkdir -p "$(dirname "$BASE")"
  debootstrap --variant=minbase bookworm "$WORK/debootstrap" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap bookworm from $MIRROR failed" "$WORK/debootstrap.log"
  # As a base image: no downloaded packages or package lists (an image's first apt-get update fetches them).
  rm -rf "$WORK/debootstrap/var/cache/apt/archives/"*.deb "$WORK/debootstrap/var/lib/apt/lists/"*
  tar -C "$WORK/debootstrap" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
  rm -rf "$WORK/debootstrap"
  pass "Debian 12 minbase root (debootstrap --variant=minbase bookworm): $(since "$t") s, $(($(stat -c %s "$BASE") / 1000000)) MB"
fi

T_SYSTEMD="-" T_CONTAINER="-"
if [ "$RUN_SYSTEMD" = 1 ]; then
  t=$(now)
  args=(--base "$BASE" --work "$WORK/systemd" --python "$PY" --starts "$STARTS" --soak "$SOAK")
  [ -z "$MODEL" ] || args+=(--model "$MODEL")
  [ "$KEEP" = 0 ] || args+=(--keep)
  bash "$SYSTEM_DIR/check_systemd_service.sh" "${args[@]}"
  T_SYSTEMD=$(since "$t")
fi
if [ "$RUN_CONTAINER" = 1 ]; then
  t=$(now)
  args=(--base "$BASE" --work "$WORK/container" --python "$PY")
  [ "$KEEP" = 0 ] || args+=(--keep)
  bash "$SYSTEM_DIR/check_container.sh" "${args[@]}"
  T_CONTAINER=$(since "$t")
fi
echo "deployment checks passed in $(since "$T0") s (systemd service $T_SYSTEMD s, container $T_CONTAINER s)"
