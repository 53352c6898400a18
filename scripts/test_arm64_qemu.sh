#!/usr/bin/env bash
# Run the test suite on an arm64 Debian root under qemu-user emulation: what a Jetson's aarch64 userland
# would run, on an x86_64 machine. Too slow for every CI run; its last result is in docs/benchmarks/aarch64.md.
#
#   sudo scripts/test_arm64_qemu.sh [--cache DIR] [--suite SUITE] [--mirror URL] [--fresh] [-- PYTEST_ARGS...]
#
#   --cache DIR   where the arm64 root is built and kept between runs (default /var/tmp/stt-agent-arm64)
#   --suite NAME  Debian release of the root (default bookworm: Python 3.11; JetPack 6 has 3.10)
#   --mirror URL  Debian mirror (default: the first deb.debian.org-style URL in this host's apt sources)
#   --fresh       build the root and the venv again from nothing
#
# Needs root (debootstrap, chroot, mounts) and: apt-get install qemu-user-static binfmt-support debootstrap
# Steps: register qemu-aarch64 with binfmt_misc, debootstrap the root once (about 3 minutes) with what
# .ci/run installs, copy this checkout into it (tracked and untracked-but-not-ignored files), then
# `scripts/setup.sh --cpu --test` and pytest inside it, as CI does. The mounts live in a private mount
# namespace, so nothing stays mounted when the script ends, however it ends.
# The host's /sys is not bound into the root: ONNX Runtime's cpuinfo reads the CPU topology from sysfs and
# segfaults when it finds the x86 host's there (exit 139 on import); without /sys it warns and falls back.
set -euo pipefail

CACHE=/var/tmp/stt-agent-arm64 SUITE=bookworm MIRROR="" FRESH=0 PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) CACHE=${2:?--cache needs a directory}; shift ;;
    --suite) SUITE=${2:?--suite needs a Debian release name}; shift ;;
    --mirror) MIRROR=${2:?--mirror needs a URL}; shift ;;
    --fresh) FRESH=1 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test_arm64_qemu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$CACHE/$SUITE-arm64
SRC=/src/stt-agent  # inside the root
# What .ci/run installs, plus what a Debian machine has and a minbase root lacks: python3-venv and
# ca-certificates (setup.sh), procps (/bin/kill, which systemd-analyze verify checks ExecReload= for),
# netbase (/etc/services, /etc/protocols).
PACKAGES=python3,python3-venv,python3-dev,gcc,pkg-config,libsystemd-dev,systemd,espeak-ng,libportaudio2,mosquitto,mosquitto-clients,openssl,ca-certificates,procps,netbase

die() { echo "test_arm64_qemu.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts): sudo $0 $*"
missing=()
for tool in debootstrap update-binfmts unshare chroot; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
[ -x /usr/bin/qemu-aarch64-static ] || [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || missing+=(qemu-aarch64-static)
[ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: apt-get install qemu-user-static binfmt-support debootstrap (unshare: util-linux, chroot: coreutils)"
if [ -z "$MIRROR" ]; then
  MIRROR=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             | awk '{print $2}' | head -n 1 || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

# 1. qemu-aarch64 in binfmt_misc (the kernel then runs arm64 ELF files through qemu).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (in a container, the host must provide it)"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
  || die "update-binfmts --enable qemu-aarch64 failed"
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is registered but disabled"

started=$(date +%s)
stamp=$ROOT/.stt-agent-root
[ "$FRESH" -eq 0 ] || rm -rf "$ROOT"
# 2. The arm64 root, once (the stamp names the package list it was built with).
if [ ! -e "$stamp" ] || [ "$(cat "$stamp")" != "$SUITE $PACKAGES" ]; then
  rm -rf "$ROOT"
  mkdir -p "$CACHE"
  echo "== debootstrap --arch=arm64 $SUITE into $ROOT ($MIRROR)"
  t0=$(date +%s)
  debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  echo "$SUITE $PACKAGES" > "$stamp"
  echo "== root built in $(( $(date +%s) - t0 )) s"
fi
# Without F (fix-binary) in the binfmt flags, the kernel looks for the interpreter inside the root.
if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 && [ -x /usr/bin/qemu-aarch64-static ]; then
  cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
fi

# 3. This checkout, copied in; the venv from an earlier run is kept (setup.sh updates it).
mkdir -p "$ROOT$SRC"
find "$ROOT$SRC" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null --files-from=- --ignore-failed-read -cf -) | tar -xf - -C "$ROOT$SRC"
else
  tar -C "$REPO" --exclude=./.venv --exclude=__pycache__ -cf - . | tar -xf - -C "$ROOT$SRC"
fi
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# debootstrap writes no /etc/hosts; the tests' brokers are reached as localhost (mosquitto_pub's default).
grep -qs '^127\.0\.0\.1[[:space:]].*localhost' "$ROOT/etc/hosts" \
  || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >> "$ROOT/etc/hosts"
# A TLS-inspecting proxy that the host trusts must be trusted inside too: pip gets the host's CA bundle.
host_ca=""
for f in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$f" ] && [ -f "$f" ]; then cp "$f" "$ROOT/etc/host-ca-bundle.crt"; host_ca=/etc/host-ca-bundle.crt; break; fi
done

# 4. setup.sh and pytest inside, in a private mount namespace (proc, dev, dev/shm; never /sys).
LOG=$CACHE/pytest.log
inner=$(cat <<EOF
set -euo pipefail
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
exec chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  ${host_ca:+PIP_CERT=$host_ca SSL_CERT_FILE=$host_ca} PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
  /bin/bash -c 'cd $SRC && echo "== \$(uname -m), \$(python3 --version), in \$(pwd)" && bash scripts/setup.sh --cpu --test && echo "== pytest" && .venv/bin/python -m pytest -p no:cacheprovider "\$@"' \
  pytest ${PYTEST_ARGS[*]:+$(printf '%q ' "${PYTEST_ARGS[@]}")}
EOF
)
echo "== setup.sh --cpu --test and pytest under qemu-aarch64 (log: $LOG)"
t0=$(date +%s)
set +e
unshare --mount --propagation private /bin/bash -c "$inner" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "== pytest exit $rc; setup + tests $(( $(date +%s) - t0 )) s, all $(( $(date +%s) - started )) s on $(uname -m) host $(nproc) cores"
exit "$rc"
