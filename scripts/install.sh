#!/usr/bin/env bash
# Install stt-agent as a systemd service on Debian, Ubuntu or NVIDIA JetPack (run as root).
#
#   sudo scripts/install.sh                    install or update; prints what it changed
#   sudo scripts/install.sh --model sensevoice-small-int8   ...and download that model
#   sudo scripts/install.sh --uninstall        remove unit, venv and user; keep config and models
#   sudo scripts/install.sh --uninstall --purge   remove config, models and caches as well
#
# What it sets up (a second run changes nothing and says so):
#   apt packages   libportaudio2 (microphone capture), libopus0 (Opus from network devices), python3-venv;
#                  and libsystemd-dev pkg-config gcc python3-dev to build systemd-python (journald fields;
#                  --no-journald skips it)
#   user           stt-agent (system user, home /var/lib/stt-agent, groups audio and video)
#   virtualenv     /opt/stt-agent/venv with stt-agent[cpu] or stt-agent[gpu] from this checkout
#   config         /etc/stt-agent/config.yaml from the repo's config.yaml, only if there is none
#                  (an existing config is never overwritten), model_dir under /var/lib/stt-agent/models
#   models         /var/lib/stt-agent/models; TensorRT engines go to /var/cache/stt-agent/tensorrt,
#                  the CPU-optimized model copy (stt-agent model optimize) to /var/cache/stt-agent/onnxruntime
#   unit           /etc/systemd/system/stt-agent.service (+ jetson-devices.conf drop-in on Jetson),
#                  enabled; restarted if it was running and something changed
#   healthcheck    /opt/stt-agent/healthcheck.sh
#
# ONNX Runtime: onnxruntime-gpu when `nvidia-smi -L` works or on Jetson, else onnxruntime (--cpu and
# --gpu force it; never both, they install the same module). PyPI has no CUDA build for Jetson
# (aarch64): use NVIDIA's wheel for your JetPack, from the Jetson AI Lab pip index (jp6/cu126 for
# JetPack 6) or the Jetson Zoo, with --ort-wheel FILE|URL, or with
# --pip-args "--extra-index-url <that index>".
#
# Testing and image building:
#   --root DIR     write everything under DIR. Commands that act on the running system (apt-get,
#                  useradd, systemctl daemon-reload/restart) run through chroot when DIR is a full
#                  root file system (has etc/passwd and usr/bin/env), and are skipped otherwise;
#                  `systemctl --root` enables the unit offline.
#   --dry-run      print what would change; change nothing.
#   --no-pip       create the venv but do not pip install (the tests use this).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=install.sh

usage() {
  cat <<EOF
usage: $PROG [options]
  --cpu | --gpu          ONNX Runtime build (default: gpu if nvidia-smi works or on Jetson, else cpu)
  --ort-wheel FILE|URL   install this onnxruntime(-gpu) wheel (Jetson: NVIDIA's wheel for your JetPack)
  --pip-args "ARGS"      extra arguments for pip install (e.g. --extra-index-url URL, --no-deps)
  --python PATH          Python >= 3.10 for the virtualenv (default: /usr/bin/python3)
  --model NAME           also download this model (stt-agent model list) into /var/lib/stt-agent/models
  --jetson | --no-jetson force Jetson detection (default: /etc/nv_tegra_release exists)
  --no-journald          do not build systemd-python (logs still reach the journal via stderr)
  --no-apt               do not install apt packages
  --no-pip               create the virtualenv but skip pip install
  --no-enable            install the unit but do not enable it
  --start                start (or restart) the service at the end
  --uninstall [--purge]  remove unit, venv and user; --purge also config, models and caches
  --root DIR             install under DIR (testing, image building)
  --dry-run              show what would change, change nothing
EOF
}

ROOT="" DRY=0 MODE=install PURGE=0 RUNTIME=auto ORT_WHEEL="" PIP_ARGS="" PYTHON=python3 MODEL=""
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3  # the system Python: one the service user can run
JETSON=auto JOURNALD=1 APT=1 PIP=1 ENABLE=1 START=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) RUNTIME=cpu ;;
    --gpu) RUNTIME=gpu ;;
    --ort-wheel) [ $# -ge 2 ] || { echo "$PROG: --ort-wheel needs a FILE or URL" >&2; exit 2; }; ORT_WHEEL=$2; shift ;;
    --pip-args) [ $# -ge 2 ] || { echo "$PROG: --pip-args needs a value" >&2; exit 2; }; PIP_ARGS=$2; shift ;;
    --python) [ $# -ge 2 ] || { echo "$PROG: --python needs a path" >&2; exit 2; }; PYTHON=$2; shift ;;
    --model) [ $# -ge 2 ] || { echo "$PROG: --model needs a NAME" >&2; exit 2; }; MODEL=$2; shift ;;
    --root) [ $# -ge 2 ] || { echo "$PROG: --root needs a DIR" >&2; exit 2; }; ROOT=${2%/}; shift ;;
    --jetson) JETSON=1 ;;
    --no-jetson) JETSON=0 ;;
    --no-journald) JOURNALD=0 ;;
    --no-apt) APT=0 ;;
    --no-pip) PIP=0 ;;
    --no-enable) ENABLE=0 ;;
    --start) START=1 ;;
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$PROG: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

NAME=stt-agent
PREFIX=/opt/stt-agent
VENV=$PREFIX/venv
CONF_DIR=/etc/stt-agent
CONFIG=$CONF_DIR/config.yaml
STATE_DIR=/var/lib/stt-agent
MODELS_DIR=$STATE_DIR/models
CACHE_DIR=/var/cache/stt-agent
UNIT_DIR=/etc/systemd/system
UNIT=$UNIT_DIR/$NAME.service
DROPIN_DIR=$UNIT_DIR/$NAME.service.d
WANTS=$UNIT_DIR/multi-user.target.wants/$NAME.service
STAMP=$VENV/.stt-agent-install

CHANGES=()
DID=0

die() { echo "$PROG: error: $*" >&2; exit 1; }
note() { echo "$PROG: $*"; }
r() { printf '%s%s' "$ROOT" "$1"; }  # a path under --root
changed() {  # record (and announce) one change
  CHANGES+=("$1")
  if [ "$DRY" = 1 ]; then echo "would: $1"; else echo "changed: $1"; fi
}
full_root() { [ -n "$ROOT" ] && [ -f "$ROOT/etc/passwd" ] && [ -x "$ROOT/usr/bin/env" ]; }
# Run a command that acts on the system: here, through chroot into a full --root, or not at all.
system_cmd() {
  if [ "$DRY" = 1 ]; then echo "would run: $*"; return 0; fi
  if [ -z "$ROOT" ]; then "$@"
  elif full_root; then chroot "$ROOT" "$@"
  else note "skipped (--root is not a full system): $*"
  fi
}
have_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$DRY" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0 $*), or use --root DIR / --dry-run"
fi
[ -z "$ROOT" ] || [ -d "$ROOT" ] || die "--root $ROOT: no such directory"

user_exists() {
  if [ -z "$ROOT" ]; then getent passwd "$NAME" >/dev/null 2>&1
  else grep -q "^$NAME:" "$ROOT/etc/passwd" 2>/dev/null
  fi
}
# Set owner and group to stt-agent where the user exists (on this system or in a full --root).
own() {  # own MODE PATH [user|group]
  local mode=$1 path=$2 who=${3:-user}
  chmod "$mode" "$path"
  if user_exists; then
    if [ -z "$ROOT" ]; then
      if [ "$who" = group ]; then chgrp "$NAME" "$path"; else chown "$NAME:$NAME" "$path"; fi
    else
      local uid gid
      uid=$(awk -F: -v n="$NAME" '$1 == n {print $3}' "$ROOT/etc/passwd")
      gid=$(awk -F: -v n="$NAME" '$1 == n {print $4}' "$ROOT/etc/passwd")
      if [ "$who" = group ]; then chgrp "$gid" "$path"; else chown "$uid:$gid" "$path"; fi
    fi
  fi
}
# Install SRC as DEST (mode MODE) unless it is there already with the same content and mode.
# Sets DID=1 if it changed something. (Helpers report through DID, not their status: bash ignores
# `set -e` inside a function called as `f || ...`, and a failed cp must stop the script.)
install_file() {
  local src=$1 dest=$2 mode=$3 what=$4
  DID=0
  [ -f "$src" ] || die "$src is missing from the checkout"
  if [ -f "$(r "$dest")" ] && cmp -s "$src" "$(r "$dest")" \
     && [ "$(stat -c %a "$(r "$dest")")" = "${mode#0}" ]; then
    return 0
  fi
  DID=1
  changed "$what $dest"
  if [ "$DRY" = 0 ]; then
    mkdir -p "$(dirname "$(r "$dest")")"
    local tmp
    tmp=$(mktemp "$(dirname "$(r "$dest")")/.$NAME.XXXXXX")
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$(r "$dest")"
  fi
}
make_dir() {  # make_dir PATH MODE [owner: user|root]; sets DID
  local path=$1 mode=$2 owner=${3:-root}
  DID=0
  [ -d "$(r "$path")" ] && return 0
  DID=1
  changed "created $path"
  if [ "$DRY" = 0 ]; then
    mkdir -p "$(r "$path")"
    if [ "$owner" = user ]; then own "$mode" "$(r "$path")"; else chmod "$mode" "$(r "$path")"; fi
  fi
}

is_jetson() {
  case "$JETSON" in
    1) return 0 ;;
    0) return 1 ;;
    *) [ -f "$(r /etc/nv_tegra_release)" ] ;;
  esac
}

# ----------------------------------------------------------------------------------------- install
apt_packages() {
  [ "$APT" = 1 ] || return 0
  if [ -n "$ROOT" ] && ! full_root; then note "skipped apt packages (--root is not a full system)"; return 0; fi
  command -v dpkg-query >/dev/null 2>&1 || { note "no dpkg: install PortAudio (libportaudio2) yourself"; return 0; }
  local wanted=(libportaudio2 libopus0 python3-venv) missing=() p admindir
  [ "$JOURNALD" = 1 ] && wanted+=(libsystemd-dev pkg-config gcc python3-dev)
  admindir=$(r /var/lib/dpkg)
  for p in "${wanted[@]}"; do
    dpkg-query --admindir="$admindir" -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  changed "apt-get install ${missing[*]}"
  system_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  system_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_user() {
  local useradd=(useradd) usermod=(usermod) groupadd=(groupadd) g
  if [ -n "$ROOT" ]; then
    if ! full_root; then note "skipped user $NAME (--root is not a full system)"; return 0; fi
    useradd+=(--root "$ROOT"); usermod+=(--root "$ROOT"); groupadd+=(--root "$ROOT")
  fi
  for g in audio video; do
    if ! grep -q "^$g:" "$(r /etc/group)"; then
      changed "created group $g"
      [ "$DRY" = 1 ] || "${groupadd[@]}" --system "$g"
    fi
  done
  if ! user_exists; then
    changed "created system user $NAME (groups audio, video)"
    [ "$DRY" = 1 ] || "${useradd[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "stt-agent speech service" --groups audio,video "$NAME"
    return 0
  fi
  for g in audio video; do
    if ! awk -F: -v g="$g" -v n="$NAME" '$1 == g {split($4, m, ","); for (i in m) if (m[i] == n) f = 1} END {exit !f}' \
         "$(r /etc/group)"; then
      changed "added $NAME to group $g"
      [ "$DRY" = 1 ] || "${usermod[@]}" --append --groups "$g" "$NAME"
    fi
  done
}

choose_runtime() {
  if [ "$RUNTIME" = auto ]; then
    if is_jetson; then RUNTIME=gpu
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then RUNTIME=gpu
    else RUNTIME=cpu
    fi
  fi
  if [ "$RUNTIME" = gpu ] && is_jetson && [ -z "$ORT_WHEEL" ] && [ "$PIP" = 1 ] \
     && [[ "$PIP_ARGS" != *index-url* && "$PIP_ARGS" != *find-links* ]]; then
    die "on Jetson, onnxruntime-gpu must be NVIDIA's build for your JetPack (PyPI has none for aarch64):
  pass --ort-wheel FILE|URL (from the Jetson AI Lab pip index or the Jetson Zoo),
  or --pip-args \"--extra-index-url <the Jetson AI Lab index for your JetPack>\", or --cpu"
  fi
}

source_stamp() {  # what the venv was built from: sources, runtime and pip options
  (
    cd "$REPO"
    printf 'runtime=%s ort_wheel=%s pip_args=%s journald=%s\n' "$RUNTIME" "$ORT_WHEEL" "$PIP_ARGS" "$JOURNALD"
    find setup.py pyproject.toml README.md agent -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      2>/dev/null | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -d' ' -f1
}

ensure_venv() {
  local v py
  v=$(r "$VENV")
  if [ ! -x "$v/bin/python" ]; then
    changed "created virtualenv $VENV"
    if [ "$DRY" = 0 ]; then
      mkdir -p "$(r "$PREFIX")"
      chmod 0755 "$(r "$PREFIX")"
      local args=()
      [ "$PIP" = 1 ] || args+=(--without-pip)
      if full_root; then
        chroot "$ROOT" python3 -m venv "${args[@]}" "$VENV"
      else
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
          || die "$PYTHON: stt-agent needs Python >= 3.10 (JetPack 6 / Ubuntu 22.04 or newer); pass --python PATH"
        "$PYTHON" -m venv "${args[@]}" "$v" || die "cannot create $VENV (apt-get install python3-venv?)"
      fi
    fi
  fi
  if [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
    # The service runs with ProtectHome=yes, and /root is closed to other users: a venv made from a
    # Python under /root or /home (pyenv, conda) cannot start there.
    local real
    real=$(readlink -f "$v/bin/python")
    case "$real" in
      /root/*|/home/*|/run/user/*)
        die "$VENV uses $real, which the service cannot reach (ProtectHome=yes); remove $VENV and run again with --python /usr/bin/python3" ;;
    esac
  fi
  if [ "$PIP" = 0 ]; then note "skipped pip install (--no-pip)"; return 0; fi
  local stamp
  stamp=$(source_stamp)
  if [ -f "$(r "$STAMP")" ] && [ "$(cat "$(r "$STAMP")")" = "$stamp" ]; then return 0; fi
  local extra=""
  [ -z "$ORT_WHEEL" ] && extra="[$RUNTIME]"
  changed "pip install stt-agent$extra${ORT_WHEEL:+ + $ORT_WHEEL} into $VENV"
  [ "$DRY" = 1 ] && return 0
  py="$v/bin/python"
  local run=("$py")
  full_root && run=(chroot "$ROOT" "$VENV/bin/python")
  "${run[@]}" -m pip --version >/dev/null 2>&1 || "${run[@]}" -m ensurepip --upgrade >/dev/null \
    || die "$VENV has no pip and ensurepip failed (apt-get install python3-venv?)"
  local src=$REPO
  if full_root; then  # the source must be visible inside the root
    src=$PREFIX/src
    rm -rf "$(r "$src")"; mkdir -p "$(r "$src")"
    (cd "$REPO" && tar --exclude=.git --exclude=.venv --exclude='models/*/' -cf - .) | tar -xf - -C "$(r "$src")"
  fi
  # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
  "${run[@]}" -m pip install -q $PIP_ARGS "$src$extra" || die "pip install of stt-agent$extra failed"
  if [ -n "$ORT_WHEEL" ]; then
    # shellcheck disable=SC2086
    "${run[@]}" -m pip install -q $PIP_ARGS "$ORT_WHEEL" || die "pip install $ORT_WHEEL failed"
  fi
  if [ "$JOURNALD" = 1 ]; then  # optional: structured journal fields (needs libsystemd-dev to build)
    # shellcheck disable=SC2086
    "${run[@]}" -m pip install -q $PIP_ARGS "systemd-python>=235" \
      || note "warning: systemd-python did not build (apt-get install libsystemd-dev pkg-config gcc python3-dev); logging plain lines to the journal instead"
  fi
  local runtimes
  runtimes=$("${run[@]}" -m pip list --format=freeze 2>/dev/null | grep -ciE '^onnxruntime(-gpu)?==' || true)
  [ "$runtimes" -le 1 ] || die "both onnxruntime and onnxruntime-gpu are in $VENV; they install the same module: remove one"
  full_root && rm -rf "$(r "$PREFIX/src")"
  echo "$stamp" > "$(r "$STAMP")"
}

install_config() {
  make_dir "$CONF_DIR" 0755
  if [ -e "$(r "$CONFIG")" ]; then return 0; fi  # never overwrite an existing config
  local model=sensevoice-small-int8 providers="[cpu]"
  if [ "$RUNTIME" = gpu ]; then
    model=sensevoice-small-fp32
    if is_jetson; then providers="[tensorrt, cuda, cpu]"; else providers="[cuda, cpu]"; fi
  fi
  grep -q '^  model_dir: ' "$REPO/config.yaml" || die "$REPO/config.yaml has no 'recognizer.model_dir' line to adapt"
  changed "installed $CONFIG (model_dir $MODELS_DIR/$model, providers $providers)"
  [ "$DRY" = 1 ] && return 0
  local tmp
  tmp=$(mktemp "$(r "$CONF_DIR")/.config.XXXXXX")
  sed -e "s#^  model_dir: .*#  model_dir: $MODELS_DIR/$model#" \
      -e "s#^  providers: \[cpu\]#  providers: $providers#" "$REPO/config.yaml" > "$tmp"
  own 0640 "$tmp" group  # root:stt-agent: it may hold the broker's password later
  mv -f "$tmp" "$(r "$CONFIG")"
}

install_unit() {
  local unit_changed=0
  install_file "$REPO/systemd/stt-agent.service" "$UNIT" 0644 "installed unit"
  unit_changed=$DID
  if is_jetson; then
    install_file "$REPO/systemd/jetson-devices.conf" "$DROPIN_DIR/jetson-devices.conf" 0644 "installed drop-in"
    [ "$DID" = 0 ] || unit_changed=1
  fi
  install_file "$REPO/scripts/healthcheck.sh" "$PREFIX/healthcheck.sh" 0755 "installed"
  if [ "$unit_changed" = 1 ] && have_systemd; then system_cmd systemctl daemon-reload; fi
  if [ "$ENABLE" = 1 ] && [ ! -L "$(r "$WANTS")" ]; then
    changed "enabled $NAME.service (multi-user.target)"
    if [ "$DRY" = 0 ]; then
      if command -v systemctl >/dev/null 2>&1; then
        systemctl ${ROOT:+--root="$ROOT"} --quiet enable "$NAME.service" 2>/dev/null || true
      fi
      if [ ! -L "$(r "$WANTS")" ]; then  # no systemctl (or it refused): the same symlink by hand
        mkdir -p "$(dirname "$(r "$WANTS")")"
        ln -sfn "$UNIT" "$(r "$WANTS")"
      fi
    fi
  fi
}

fetch_model() {
  [ -n "$MODEL" ] || return 0
  if [ -d "$(r "$MODELS_DIR/$MODEL")" ]; then return 0; fi
  if [ -n "$ROOT" ] || [ "$PIP" = 0 ]; then note "skipped model download (needs the installed venv on this system)"; return 0; fi
  changed "downloaded model $MODEL into $MODELS_DIR"
  [ "$DRY" = 1 ] && return 0
  runuser -u "$NAME" -- "$VENV/bin/stt-agent" model fetch "$MODEL" --models-dir "$MODELS_DIR" \
    || die "model download failed (run it again: downloads resume)"
}

config_model_dir() { sed -n 's/^  model_dir: *//p' "$CONFIG" 2>/dev/null | head -n 1; }

optimize_model() {
  # CPU boxes: save ONNX Runtime's optimized graph of the model once; every start then loads it ~40% faster.
  [ "$RUNTIME" = cpu ] && [ -z "$ROOT" ] && [ "$PIP" = 1 ] && [ "$DRY" = 0 ] && [ -e "$CONFIG" ] || return 0
  local model_dir
  model_dir=$(config_model_dir)
  [ -n "$model_dir" ] && [ -d "$model_dir" ] || return 0
  local out
  if out=$(runuser -u "$NAME" -- env CACHE_DIRECTORY="$CACHE_DIR" "$VENV/bin/stt-agent" model optimize \
      --config "$CONFIG" 2>&1); then
    case $out in *written*) changed "saved an optimized copy of the model in $CACHE_DIR/onnxruntime" ;; esac
  else
    note "warning: could not save an optimized model copy (the service loads the original instead): ${out##*$'\n'}"
  fi
}

do_install() {
  choose_runtime
  apt_packages
  ensure_user
  ensure_venv
  install_config
  make_dir "$STATE_DIR" 0750 user
  make_dir "$MODELS_DIR" 0750 user
  # Before the first start too: the `model optimize` step printed below writes here as stt-agent,
  # and systemd's CacheDirectory= creates it only when the service starts.
  make_dir "$CACHE_DIR" 0750 user
  install_unit
  fetch_model
  optimize_model
  if [ ${#CHANGES[@]} -gt 0 ] && [ "$DRY" = 0 ] && [ -z "$ROOT" ] && [ "$PIP" = 1 ] && [ -e "$CONFIG" ]; then
    "$VENV/bin/stt-agent" check-config --config "$CONFIG" >/dev/null \
      || note "warning: $CONFIG does not validate (see above); the service will not start until it does"
  fi
  if have_systemd && [ "$DRY" = 0 ]; then
    if [ "$START" = 1 ]; then systemctl restart "$NAME.service"
    elif [ ${#CHANGES[@]} -gt 0 ]; then systemctl try-restart "$NAME.service"  # only if it was running
    fi
  fi
}

# --------------------------------------------------------------------------------------- uninstall
remove_path() {  # remove_path PATH WHAT
  [ -e "$(r "$1")" ] || [ -L "$(r "$1")" ] || return 0
  changed "removed $2 $1"
  [ "$DRY" = 1 ] || rm -rf "$(r "$1")"
}

do_uninstall() {
  if have_systemd && { [ -e "$UNIT" ] || [ -L "$WANTS" ]; }; then
    changed "stopped and disabled $NAME.service"
    system_cmd systemctl disable --now "$NAME.service" || true
  fi
  remove_path "$WANTS" "enable link"
  remove_path "$UNIT" "unit"
  remove_path "$DROPIN_DIR" "drop-ins"
  if have_systemd && [ "$DRY" = 0 ]; then systemctl daemon-reload; systemctl reset-failed "$NAME.service" 2>/dev/null || true; fi
  remove_path "$PREFIX" "virtualenv and scripts"
  if user_exists; then
    if [ -z "$ROOT" ] || full_root; then
      changed "removed user $NAME"
      if [ "$DRY" = 0 ]; then
        if [ -z "$ROOT" ]; then userdel "$NAME"; else userdel --root "$ROOT" "$NAME"; fi
      fi
    fi
  fi
  if [ "$PURGE" = 1 ]; then
    remove_path "$CONF_DIR" "config"
    remove_path "$STATE_DIR" "models and state"
    remove_path "$CACHE_DIR" "caches (TensorRT engines, optimized model copies)"
  else
    local kept=()
    [ -e "$(r "$CONFIG")" ] && kept+=("$CONFIG")
    [ -d "$(r "$MODELS_DIR")" ] && kept+=("$MODELS_DIR")
    [ -d "$(r "$CACHE_DIR")" ] && kept+=("$CACHE_DIR")
    [ ${#kept[@]} -eq 0 ] || note "kept ${kept[*]} (--purge removes them)"
  fi
}

if [ "$MODE" = uninstall ]; then do_uninstall; else do_install; fi

if [ ${#CHANGES[@]} -eq 0 ]; then
  note "nothing changed"
elif [ "$DRY" = 1 ]; then
  note "dry run: ${#CHANGES[@]} change(s) would be made"
else
  note "${#CHANGES[@]} change(s) made"
fi
if [ "$MODE" = install ] && [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
  model_dir=$(config_model_dir)
  if [ -n "$model_dir" ] && [ ! -d "$model_dir" ]; then
    note "next: download the model the config names, then start the service:"
    note "  sudo -u $NAME $VENV/bin/stt-agent model fetch $(basename "$model_dir") --models-dir $(dirname "$model_dir")"
    [ "$RUNTIME" = cpu ] && note "  sudo -u $NAME env CACHE_DIRECTORY=$CACHE_DIR $VENV/bin/stt-agent model optimize --config $CONFIG"
    note "  sudo systemctl start $NAME && $PREFIX/healthcheck.sh"
  fi
fi
