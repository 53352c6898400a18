# Helpers shared by the deployment checks (sourced, not run).
# shellcheck shell=bash
# shellcheck disable=SC2034  # HELPER, BROKER_PID and SUB_PID are read by the scripts that source this

SYSTEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SYSTEM_DIR/../.." && pwd)
HELPER="$SYSTEM_DIR/deploy_checks.py"

pass() { echo "PASS: $*"; }
skip() { echo "SKIP: $*"; }
info() { echo "  $*"; }
# fail MESSAGE [LOG...]: one line saying what is wrong, then the end of each log named.
fail() {
  local msg=$1 f
  shift
  echo "FAIL: $msg" >&2
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f" >&2
    tail -n 40 "$f" >&2
  done
  exit 1
}

now() { date +%s.%N; }
# since START: seconds since START (from now), one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_until SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds; fails after SECONDS.
wait_until() {
  local limit=$1 start
  shift
  start=$(now)
  until "$@" >/dev/null 2>&1; do
    if awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then return 1; fi
    sleep 0.2
  done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_broker DIR: a Mosquitto broker on 127.0.0.1; sets BROKER_PORT and BROKER_PID.
start_broker() {
  local dir=$1
  mkdir -p "$dir"
  BROKER_PORT=$(free_port)
  {
    echo "listener $BROKER_PORT 127.0.0.1"
    echo "allow_anonymous true"
    echo "log_dest file $dir/mosquitto.log"
    echo "connection_messages true"
    # As root, mosquitto would otherwise switch to user mosquitto, who cannot write this log.
    [ "$(id -u)" != 0 ] || echo "user root"
  } > "$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.out" 2>&1 &
  BROKER_PID=$!
  wait_until 10 python3 -c "import socket; socket.create_connection(('127.0.0.1', $BROKER_PORT), 1)" \
    || fail "mosquitto did not listen on 127.0.0.1:$BROKER_PORT" "$dir/mosquitto.out" "$dir/mosquitto.log"
}

# subscribe FILE TOPIC: record every message as "unix-time retained topic payload", one per line;
# sets SUB_PID.
subscribe() {
  mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -V mqttv5 -q 1 -t "$2" -F '%U %r %t %p' >"$1" 2>&1 &
  SUB_PID=$!
}

# count_msgs FILE TOPIC PAYLOAD_PREFIX: messages on TOPIC whose payload starts with PAYLOAD_PREFIX.
count_msgs() { awk -v t="$2" -v p="$3" '$3 == t && index($4, p) == 1 { n++ } END { print n + 0 }' "$1"; }
# has_msgs FILE TOPIC PAYLOAD_PREFIX N: at least N such messages.
has_msgs() { [ "$(count_msgs "$1" "$2" "$3")" -ge "$4" ]; }
# last_payload FILE TOPIC: the payload of the newest message on TOPIC.
last_payload() { awk -v t="$2" '$3 == t { $1 = $2 = $3 = ""; p = substr($0, 4) } END { print p }' "$1"; }

# stop_pid PID [SECONDS]: SIGTERM a process this script started, SIGKILL if it outlives SECONDS.
stop_pid() {
  local pid=$1 limit=${2:-10}
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait_until "$limit" sh -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# copy_tree DEST: the working tree (tracked and untracked files that git does not ignore).
copy_tree() {
  mkdir -p "$1"
  if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$1"
  else
    (cd "$REPO" && tar --exclude=.venv --exclude=.git --exclude='models/*/' -cf - .) | tar -xf - -C "$1"
  fi
}
