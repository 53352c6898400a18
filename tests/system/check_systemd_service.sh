#!/usr/bin/env bash
# stt-agent as a systemd service under a real booted systemd: a fresh Debian 12 root booted with
# systemd-nspawn, scripts/install.sh run inside it as the README says, a model and a named pipe as
# the audio input, a Mosquitto broker on the host's loopback (the container shares its network).
# Then: start gated on READY=1, finals on the broker, the journal's fields (each record once, no
# speech text), the sandbox, a second install.sh, the watchdog restart, stop, healthcheck.sh, and
# --uninstall.
#
#   check_systemd_service.sh --base TAR --work DIR --python PY [--model DIR] [--starts N] [--soak SECONDS] [--keep]
#
#   --base TAR     a Debian 12 minbase root (debootstrap --variant=minbase bookworm), as a tarball
#   --python PY    a Python with onnx, to build the tiny test model (not needed with --model)
#   --model DIR    use this model directory instead of the tiny test model (benchmarks)
#   --starts N     start the service N times and report the median time to READY (benchmarks)
#   --soak S       before stopping, feed speech every 10 s for S seconds and report the RSS
#   --keep         leave the root directory and logs under DIR
# Needs root, systemd-nspawn (systemd-container), mosquitto, mosquitto-clients and espeak-ng on the host.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE="" WORK="" PY="" MODEL="" STARTS=1 SOAK=0 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=${2:?--base needs a tarball}; shift ;;
    --work) WORK=${2:?--work needs a directory}; shift ;;
    --python) PY=${2:?--python needs a path}; shift ;;
    --model) MODEL=${2:?--model needs a directory}; shift ;;
    --starts) STARTS=${2:?--starts needs a number}; shift ;;
    --soak) SOAK=${2:?--soak needs seconds}; shift ;;
    --keep) KEEP=1 ;;
    *) echo "check_systemd_service.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$BASE" ] && [ -n "$WORK" ] || { echo "usage: check_systemd_service.sh --base TAR --work DIR --python PY" >&2; exit 2; }
[ -n "$MODEL" ] || [ -n "$PY" ] || { echo "check_systemd_service.sh: --python PY (with onnx) or --model DIR" >&2; exit 2; }

ROOT=$WORK/root
LOGS=$WORK/logs
MACHINE=stt-agent-ci
DEVICE=ci-box
TOPIC=stt-agent/$DEVICE
# The documented input of a box without a microphone (systemd/README.md): its own directory, so
# that writers in group audio can reach it (the state directory is 0750 stt-agent).
FIFO_DIR=/var/lib/stt-agent-audio
FIFO=$FIFO_DIR/audio
SPEECH=/srv/stt-agent-ci/speech.wav
UNIT_D=/etc/systemd/system/stt-agent.service.d
mkdir -p "$LOGS"

NSPAWN_PID="" CT_PID="" BROKER_PID="" SUB_PID=""
cleanup() {
  local rc=$?
  stop_pid "$SUB_PID"
  stop_pid "$BROKER_PID"
  # SIGTERM makes systemd-nspawn power the container off (systemd inside shuts down cleanly).
  stop_pid "$NSPAWN_PID" 60
  if [ "$KEEP" = 0 ]; then rm -rf "$ROOT"; fi
  exit $rc
}
trap cleanup EXIT

# Commands inside the booted container: its namespaces, a clean environment (plus the host's pip
# and proxy settings, so pip inside reaches the package index the way the host does).
PASS_ENV=()
while IFS= read -r v; do PASS_ENV+=("$v"); done \
  < <(env | grep -E '^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
ct() {
  nsenter --target "$CT_PID" --mount --uts --ipc --net --pid --cgroup -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    ${PASS_ENV[@]+"${PASS_ENV[@]}"} "$@"
}
prop() { ct systemctl show -p "$1" --value stt-agent.service; }
main_pid() { prop MainPID; }
is_running() { [ "$(ct systemctl show -p ActiveState -p SubState --value stt-agent.service | paste -sd' ')" = "active running" ]; }
journal_json() { ct journalctl -u stt-agent.service -o json --no-pager > "$1"; }
# write_speech: one writer (uid nobody, group audio, as systemd/README.md allows) sends the speech.
write_speech() {
  ct sh -c "exec timeout 30 setpriv --reuid=65534 --regid=65534 --groups=\$(getent group audio | cut -d: -f3) \
    --inh-caps=-all sh -c 'cat $SPEECH > $FIFO'"
}
finals() { count_msgs "$LOGS/mqtt.log" "$TOPIC/stt/final" '{'; }

# ------------------------------------------------------------------------------------- the root
t0=$(now)
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
echo "$MACHINE" > "$ROOT/etc/hostname"
# What Debian's installer writes; debootstrap writes none, and the installed config's broker is localhost.
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$MACHINE" > "$ROOT/etc/hosts"
# A server's base: systemd as init, and python3 (install.sh itself installs python3-venv and the rest).
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --pipe -E DEBIAN_FRONTEND=noninteractive \
  sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus python3 ca-certificates' \
  > "$LOGS/root-apt.log" 2>&1 || fail "could not install systemd into the root" "$LOGS/root-apt.log"
copy_tree "$ROOT/root/stt-agent"
mkdir -p "$ROOT/srv/stt-agent-ci"
python3 "$HELPER" speech-wav "$ROOT$SPEECH" > "$LOGS/speech.log" 2>&1 || fail "espeak-ng could not make the speech" "$LOGS/speech.log"
chmod -R a+rX "$ROOT/srv/stt-agent-ci"
if [ -z "$MODEL" ]; then
  "$PY" "$HELPER" tiny-model "$WORK/tiny-model" > "$LOGS/model.log" 2>&1 || fail "cannot build the tiny model with $PY" "$LOGS/model.log"
  MODEL=$WORK/tiny-model
fi

# The host's CA bundle and pip configuration, read-only: pip inside trusts what the host trusts.
BINDS=(--bind-ro=/etc/ssl/certs)
for p in /etc/pip.conf /etc/xdg/pip; do [ -e "$p" ] && BINDS+=("--bind-ro=$p"); done
for v in ${PASS_ENV[@]+"${PASS_ENV[@]}"}; do
  for p in ${v#*=}; do
    case "$p" in /etc/ssl/certs*|/etc/pip.conf|/etc/xdg/pip*) continue ;; esac
    [[ "$p" == /* && -e "$p" ]] && BINDS+=("--bind-ro=$p")
  done
done
# --register=no --keep-unit: the host need not run systemd (machined) itself. No --private-network:
# the host's network, so the broker on the host's loopback and the package index are reachable.
systemd-nspawn -D "$ROOT" -b --machine="$MACHINE" --register=no --keep-unit --console=read-only \
  "${BINDS[@]}" > "$LOGS/console.log" 2>&1 &
NSPAWN_PID=$!
wait_until 30 pgrep -P "$NSPAWN_PID" -x systemd || fail "systemd-nspawn did not start systemd" "$LOGS/console.log"
CT_PID=$(pgrep -P "$NSPAWN_PID" -x systemd)
# systemctl needs systemd's private socket, which appears a moment after PID 1 starts.
wait_until 30 ct test -S /run/systemd/private || fail "the container's systemd opened no control socket" "$LOGS/console.log"
state=$(ct timeout 90 systemctl is-system-running --wait || true)
[ "$state" = running ] || fail "the container's systemd is '$state', not running: $(ct systemctl --failed --no-legend --plain | paste -sd' ')" "$LOGS/console.log"
pass "a fresh Debian 12 root booted under systemd-nspawn -b ($(ct systemctl --version | head -n 1)), system running; root ready in $(since "$t0") s"

# ------------------------------------------------------------------------------------- install
t=$(now)
ct bash -c 'cd /root/stt-agent && scripts/install.sh' > "$LOGS/install-1.log" 2>&1 || fail "scripts/install.sh failed" "$LOGS/install-1.log"
INSTALL_S=$(since "$t")
grep -q "^install.sh: [0-9]* change(s) made" "$LOGS/install-1.log" || fail "install.sh did not report its changes" "$LOGS/install-1.log"
pass "scripts/install.sh as the README says: $(grep -c '^changed:' "$LOGS/install-1.log") changes in $INSTALL_S s (apt packages, user, virtualenv + pip install, config, unit enabled)"
# healthcheck.sh reads the retained health topic with mosquitto_sub.
ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto-clients \
  > "$LOGS/apt-clients.log" 2>&1 || fail "apt-get install mosquitto-clients failed" "$LOGS/apt-clients.log"

# The model where the installed config looks for it (model fetch cannot download here), then the
# optimized copy, as install.sh's closing lines tell (runuser for sudo -u: a minimal root has no sudo).
model_dir=$(sed -n 's/^  model_dir: *//p' "$ROOT/etc/stt-agent/config.yaml" | head -n 1)
[ -n "$model_dir" ] || fail "no recognizer.model_dir in the installed /etc/stt-agent/config.yaml"
cp -r "$MODEL" "$ROOT$model_dir"
ct chown -R stt-agent:stt-agent "$model_dir"
ct runuser -u stt-agent -- env CACHE_DIRECTORY=/var/cache/stt-agent /opt/stt-agent/venv/bin/stt-agent model optimize \
  --config /etc/stt-agent/config.yaml > "$LOGS/optimize.log" 2>&1 || fail "stt-agent model optimize failed" "$LOGS/optimize.log"

# The operator's edits (sudoedit /etc/stt-agent/config.yaml): broker, device name, audio input.
start_broker "$WORK/broker"
ct sed -i -e "0,/^  enabled: false\$/s//  enabled: true/" -e "s/^  port: 1883\$/  port: $BROKER_PORT/" \
  -e "s/^  device_id: \"\"\$/  device_id: $DEVICE/" -e "s#^  input: mic\$#  input: $FIFO#" /etc/stt-agent/config.yaml
ct sh -c "install -d -m 0750 -o root -g audio $FIFO_DIR && mkfifo -m 0660 $FIFO && chown stt-agent:audio $FIFO"
subscribe "$LOGS/mqtt.log" "$TOPIC/#"

# ------------------------------------------------------------------------------------- start
t=$(now)
ct systemctl start stt-agent.service || fail "systemctl start stt-agent failed" "$LOGS/console.log"
START_S=$(since "$t")
is_running || fail "systemctl start returned, but the unit is $(ct systemctl is-active stt-agent.service)"
journal_json "$LOGS/journal-start.json"
ready=$(python3 "$HELPER" ready "$LOGS/journal-start.json" --invocation "$(prop InvocationID)" \
  --exec-start "$(prop ExecMainStartTimestampMonotonic)" --active-enter "$(prop ActiveEnterTimestampMonotonic)") \
  || fail "start not gated on READY=1" "$LOGS/journal-start.json"
status_line=$(ct systemctl status stt-agent.service --no-pager --lines=0 | sed -n 's/^ *Status: //p')
[ -n "$status_line" ] || fail "systemctl status shows no Status: line"
pass "systemctl start returned after READY=1 in $START_S s ($ready); systemctl status: Status: $status_line"
wait_until 20 has_msgs "$LOGS/mqtt.log" "$TOPIC/status" online 1 || fail "no 'online' on $TOPIC/status" "$LOGS/mqtt.log" "$WORK/broker/mosquitto.log"
if [ "$STARTS" -gt 1 ]; then
  : > "$LOGS/starts.log"
  for _ in $(seq 2 "$STARTS"); do
    ct systemctl stop stt-agent.service
    # Manual starts count against StartLimitBurst=5 too; reset-failed clears the count.
    ct systemctl reset-failed stt-agent.service
    t=$(now)
    ct systemctl start stt-agent.service || fail "systemctl start failed on a repeat" "$LOGS/console.log"
    wall=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    echo "$wall $(( ($(prop ActiveEnterTimestampMonotonic) - $(prop ExecMainStartTimestampMonotonic)) / 1000 ))" >> "$LOGS/starts.log"
  done
  stats=$(python3 -c 'import statistics as s, sys
w, r = zip(*(map(float, line.split()) for line in open(sys.argv[1])))
print(f"main process start -> READY median {s.median(r):.0f} ms (min {min(r):.0f}, max {max(r):.0f}); "
      f"systemctl start median {s.median(w):.2f} s (min {min(w):.2f}, max {max(w):.2f})")' "$LOGS/starts.log")
  pass "$((STARTS - 1)) more starts: $stats"
fi

# ------------------------------------------------------------------------------------- finals
for n in 1 2; do
  write_speech || fail "could not write speech into $FIFO as a member of group audio"
  wait_until 30 has_msgs "$LOGS/mqtt.log" "$TOPIC/stt/final" '{' "$n" \
    || fail "no final $n on $TOPIC/stt/final" "$LOGS/mqtt.log"
done
final=$(last_payload "$LOGS/mqtt.log" "$TOPIC/stt/final")
pass "2 writers on the named pipe (uid nobody, group audio) -> 2 finals on $TOPIC/stt/final: ${final:0:90}..."
# mqtt.outbox: auto is the disk where systemd gives a StateDirectory= ($STATE_DIRECTORY)
outbox=$(ct sh -c 'ls /var/lib/stt-agent/mqtt-outbox-*.sqlite3') || fail "no MQTT outbox file in the unit's StateDirectory (/var/lib/stt-agent)"
owner=$(ct stat -c %U "$outbox")
[ "$owner" = stt-agent ] || fail "the outbox file $outbox belongs to $owner, not stt-agent"
pass "the disk outbox is in the unit's StateDirectory: $outbox (owner $owner)"

# ------------------------------------------------------------------------------------- health
out=$(ct /opt/stt-agent/healthcheck.sh --mqtt-topic "$TOPIC/health" --mqtt-host 127.0.0.1 --mqtt-port "$BROKER_PORT") \
  || fail "healthcheck.sh says the running service is unhealthy: $out"
[[ "$out" == healthy:*"health topic ok, status online" ]] || fail "healthcheck.sh: unexpected answer: $out"
out2=$(ct /opt/stt-agent/venv/bin/stt-agent health) || fail "stt-agent health says the running service is unhealthy: $out2"
pass "while running: healthcheck.sh exit 0 ($out); stt-agent health exit 0 ($out2)"

# ------------------------------------------------------------------------------------- sandbox
pid=$(main_pid)
uid=$(ct id -u stt-agent)
gid=$(ct id -g stt-agent)
# In the service's own mount namespace, as its user: what the unit's sandbox lets it write.
as_service() { ct nsenter --target "$pid" --mount --setuid "$uid" --setgid "$gid" -- "$@"; }
for d in /etc /usr /opt/stt-agent /var/lib /var/cache /srv; do
  err=$(as_service touch "$d/.sandbox-probe" 2>&1) && fail "the service can write $d"
  [[ "$err" == *"Read-only file system"* ]] || fail "writing $d: expected EROFS, got: $err"
done
for d in /root /home; do
  err=$(as_service ls "$d" 2>&1) && fail "the service can list $d (ProtectHome)"
  [[ "$err" == *"Permission denied"* ]] || fail "listing $d: expected EACCES, got: $err"
done
for d in /var/lib/stt-agent /var/cache/stt-agent /run/stt-agent /tmp; do
  as_service sh -c "touch $d/.sandbox-probe && rm $d/.sandbox-probe" || fail "the service cannot write its own $d"
done
as_service touch /tmp/.sandbox-private
! ct test -e /tmp/.sandbox-private || fail "the service's /tmp is not private"
procstat=$(ct grep -E '^(CapEff|NoNewPrivs|Seccomp):' "/proc/$pid/status" | paste -sd' ' | tr -s '\t ' ' ')
[ "$procstat" = "CapEff: 0000000000000000 NoNewPrivs: 1 Seccomp: 2" ] || fail "the agent's process: $procstat"
# What it needs works under the sandbox: the model and its optimized copy, the broker, the pipe, the health file.
grep -q '"MESSAGE":"model /var/lib/stt-agent/models/[^"]*optimized copy[^"]*loaded on cpu' "$LOGS/journal-start.json" \
  || fail "the model was not loaded from its optimized copy in /var/cache/stt-agent" "$LOGS/journal-start.json"
score=$(ct systemd-analyze security stt-agent.service --no-pager | sed -n 's/.*Overall exposure level for stt-agent.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "systemd-analyze security stt-agent: exposure '$score', above 2.0"
devices="DevicePolicy=closed NOT CHECKED (no probe of the device controller)"
if ! ct test -e /sys/fs/cgroup/devices/system.slice && ! ct test -e /sys/fs/cgroup/system.slice/cgroup.controllers; then
  devices="DevicePolicy=closed NOT CHECKED: the container has no device cgroup controller of its own (a cgroup v1 host; systemd-nspawn does not delegate it)"
fi
pass "sandbox: as stt-agent in the service's namespace /etc /usr /opt/stt-agent /var/lib /var/cache /srv are read-only (EROFS), /root /home hidden, only /var/lib/stt-agent /var/cache/stt-agent /run/stt-agent and a private /tmp writable; $procstat; model + optimized copy, MQTT, pipe, health file work; systemd-analyze security (online): $score; $devices; ALSA and GPU devices not checked (none on this machine)"

# ------------------------------------------------------------------------------------- install.sh again
snapshot() {
  ct sh -c 'find /opt/stt-agent /etc/stt-agent /etc/systemd/system /var/lib/stt-agent/models /var/cache/stt-agent \
    -printf "%p %y %m %u %g %l\n" | sort; find /opt/stt-agent /etc/stt-agent /etc/systemd/system -type f -print0 \
    | sort -z | xargs -0 sha256sum; getent passwd stt-agent; getent group audio video stt-agent'
}
before=$(snapshot | sha256sum)
ct bash -c 'cd /root/stt-agent && scripts/install.sh' > "$LOGS/install-2.log" 2>&1 || fail "the second install.sh failed" "$LOGS/install-2.log"
grep -qx "install.sh: nothing changed" "$LOGS/install-2.log" && ! grep -q '^changed:' "$LOGS/install-2.log" \
  || fail "the second install.sh changed something" "$LOGS/install-2.log"
[ "$(snapshot | sha256sum)" = "$before" ] || fail "the second install.sh said nothing changed, but files did"
[ "$(main_pid)" = "$pid" ] || fail "the second install.sh restarted the service"
pass "install.sh a second time: 'nothing changed'; files, modes, owners, user and groups identical; service not restarted"

# ------------------------------------------------------------------------------------- watchdog
# WatchdogSec=30 in the unit; 4 s here keeps the check short. SIGSTOP freezes every thread, the
# watchdog's too, so the pings stop as for a hung pipeline.
ct mkdir -p "$UNIT_D"
printf '[Service]\nWatchdogSec=4\n' > "$ROOT$UNIT_D/ci-watchdog.conf"
ct systemctl daemon-reload
ct systemctl restart stt-agent.service
wait_until 30 is_running || fail "stt-agent did not come back after the restart with WatchdogSec=4"
restarts0=$(prop NRestarts)
pid=$(main_pid)
mark=$(wc -l < "$LOGS/mqtt.log")
t=$(now)
ct sh -c "kill -STOP $pid"  # the shell's kill: a minimal root has no procps
came_back() { [ "$(prop NRestarts)" -gt "$restarts0" ] && is_running && [ "$(main_pid)" != "$pid" ]; }
wait_until 60 came_back || fail "the stopped agent was not killed and restarted (NRestarts $(prop NRestarts))" "$LOGS/console.log"
BACK_S=$(since "$t")
restarts1=$(prop NRestarts)
ct journalctl -u stt-agent.service --no-pager -o cat > "$LOGS/journal.txt"
grep -q "Watchdog timeout" "$LOGS/journal.txt" && grep -q "Failed with result 'watchdog'" "$LOGS/journal.txt" \
  || fail "no watchdog timeout in the journal" "$LOGS/journal.txt"
killed=$(grep -o 'Main process exited, code=killed, status=[^ ]*' "$LOGS/journal.txt" | tail -n 1)
new_msgs() { tail -n +"$((mark + 1))" "$LOGS/mqtt.log"; }
offline_then_online() { new_msgs | awk -v t="$TOPIC/status" '$3 == t { s = s $4 " " } END { exit !(s ~ /offline .*online/) }'; }
wait_until 20 offline_then_online || fail "no offline (Last Will) then online on $TOPIC/status after the restart" "$LOGS/mqtt.log"
write_speech || fail "could not write speech after the restart"
wait_until 30 has_msgs "$LOGS/mqtt.log" "$TOPIC/stt/final" '{' 3 || fail "no final after the watchdog restart" "$LOGS/mqtt.log"
pass "watchdog: SIGSTOP -> 'Watchdog timeout' after WatchdogSec=4, ${killed#Main process exited, }, restarted: NRestarts $restarts0 -> $restarts1, active again $BACK_S s after the SIGSTOP; status offline (Last Will) then online; finals flow again"
out=$(ct /opt/stt-agent/healthcheck.sh) && fail "healthcheck.sh says healthy right after a watchdog restart: $out"
[[ "$out" == *"watchdog timeout"* ]] || fail "healthcheck.sh after the watchdog restart: $out"
pass "healthcheck.sh after the restart: exit 1 ($out)"
rm -f "$ROOT$UNIT_D/ci-watchdog.conf"
ct systemctl daemon-reload

# ------------------------------------------------------------------------------------- a kill in an outage
# The broker out of the agent's reach (its config names a port nobody listens on; the test's subscriber
# stays connected), a final made and journalled in the disk outbox, then SIGKILL. systemd starts the agent
# again, its config naming the broker again: the killed run's final is delivered first, once.
ct systemctl reset-failed stt-agent.service  # the starts above count against StartLimitBurst=5
dead_port=$(free_port)
ct sed -i "s/^  port: $BROKER_PORT\$/  port: $dead_port/" /etc/stt-agent/config.yaml
ct systemctl restart stt-agent.service
wait_until 30 is_running || fail "stt-agent did not start with the broker out of reach" "$LOGS/console.log"
before=$(finals)
pid=$(main_pid)
rows() {
  ct runuser -u stt-agent -- /opt/stt-agent/venv/bin/python -c 'import glob, sqlite3
db = sqlite3.connect("file:%s?mode=ro" % glob.glob("/var/lib/stt-agent/mqtt-outbox-*.sqlite3")[0], uri=True)
print(db.execute("SELECT count(*) FROM outbox").fetchone()[0])'
}
journalled() { [ "$(rows)" -ge 3 ]; }  # the final, its emotion and its language
write_speech || fail "could not write speech with the broker out of reach"
wait_until 30 journalled || fail "the final made in the outage is not in the disk outbox ($(rows) rows)"
ct sed -i "s/^  port: $dead_port\$/  port: $BROKER_PORT/" /etc/stt-agent/config.yaml
restarts0=$(prop NRestarts)
ct systemctl kill -s SIGKILL stt-agent.service
came_back() { [ "$(prop NRestarts)" -gt "$restarts0" ] && is_running && [ "$(main_pid)" != "$pid" ]; }
wait_until 30 came_back || fail "the killed agent was not restarted (NRestarts $(prop NRestarts))" "$LOGS/console.log"
delivered() { [ "$(finals)" -gt "$before" ] && [ "$(rows)" -eq 0 ]; }
wait_until 30 delivered || fail "the final of the killed run did not reach $TOPIC/stt/final ($(rows) rows left)" "$LOGS/mqtt.log"
[ "$(finals)" -eq $((before + 1)) ] || fail "the killed run's final arrived $(($(finals) - before)) times" "$LOGS/mqtt.log"
read_back=$(ct journalctl -u stt-agent.service _PID="$(main_pid)" -o cat --no-pager | grep -o '[0-9]* event(s) from an earlier run read back' | head -n 1)
[ -n "$read_back" ] || fail "the restarted agent did not say what it read back"
pass "SIGKILL with a final waiting in an outage: restarted by systemd, $read_back, delivered once; the outbox empty again"

# ------------------------------------------------------------------------------------- soak (benchmarks)
if [ "$SOAK" -gt 0 ]; then
  ct systemctl restart stt-agent.service
  wait_until 120 is_running || fail "stt-agent did not come back for the soak"
  pid=$(main_pid)
  t=$(now)
  rss_log=$LOGS/rss.log
  : > "$rss_log"
  while awk -v a="$t" -v b="$(now)" -v l="$SOAK" 'BEGIN { exit !(b - a < l) }'; do
    write_speech || fail "could not write speech during the soak"
    echo "$(since "$t") $(ct awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")" >> "$rss_log"
    sleep 10
  done
  [ "$(main_pid)" = "$pid" ] || fail "the agent restarted during the soak"
  rss=$(ct awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
  pass "soak: $SOAK s with speech every ~10 s, $(finals) finals in all; RSS of the agent $rss MiB at the end (KiB over time: $(awk '{ printf "%s:%s ", int($1), $2 }' "$rss_log"))"
fi

# ------------------------------------------------------------------------------------- stop
timeout_stop=$(prop TimeoutStopUSec)
pid=$(main_pid)
mark=$(wc -l < "$LOGS/mqtt.log")
t=$(now)
ct systemctl stop stt-agent.service
STOP_S=$(since "$t")
result="$(prop Result) $(prop ExecMainStatus)"
[ "$result" = "success 0" ] || fail "stop: result/exit status '$result'" "$LOGS/console.log"
offline_after() { tail -n +"$((mark + 1))" "$LOGS/mqtt.log" | awk -v t="$TOPIC/status" '$3 == t && $4 == "offline" { f = 1 } END { exit !f }'; }
# The subscriber may see it a moment after systemctl returns; the agent sent it before exiting 0.
wait_until 2 offline_after || fail "no 'offline' on $TOPIC/status after systemctl stop" "$LOGS/mqtt.log"
pass "systemctl stop: 'offline' published and exit 0 in $STOP_S s (TimeoutStopSec=$timeout_stop)"
out=$(ct /opt/stt-agent/healthcheck.sh) && fail "healthcheck.sh says a stopped service is healthy: $out"
[[ "$out" == *"not running (inactive)"* ]] || fail "healthcheck.sh on a stopped service: $out"
out2=$(ct /opt/stt-agent/venv/bin/stt-agent health) && fail "stt-agent health says a stopped agent is healthy: $out2"
pass "stopped: healthcheck.sh exit 1 ($out); stt-agent health exit 1"

journal_json "$LOGS/journal.json"
jline=$(python3 "$HELPER" journal "$LOGS/journal.json" --finals "$(finals)") || fail "journal" "$LOGS/journal.json"
pass "journalctl -u stt-agent -o json: $jline"

# ------------------------------------------------------------------------------------- uninstall
ct bash -c 'cd /root/stt-agent && scripts/install.sh --uninstall' > "$LOGS/uninstall.log" 2>&1 \
  || fail "install.sh --uninstall failed" "$LOGS/uninstall.log"
ct test -f /etc/stt-agent/config.yaml && ct test -f "$model_dir/tokens.txt" \
  || fail "--uninstall removed the config or the model" "$LOGS/uninstall.log"
! ct test -e /opt/stt-agent && ! ct test -e /etc/systemd/system/stt-agent.service && ! ct getent passwd stt-agent >/dev/null \
  || fail "--uninstall left the venv, the unit or the user behind" "$LOGS/uninstall.log"
[ "$(ct systemctl show -p LoadState --value stt-agent.service)" = not-found ] || fail "the unit is still known to systemd"
pass "install.sh --uninstall: unit, venv and user gone; /etc/stt-agent/config.yaml and $model_dir kept"
echo "timings: install.sh $INSTALL_S s, systemctl start $START_S s, watchdog restart $BACK_S s, systemctl stop $STOP_S s"
