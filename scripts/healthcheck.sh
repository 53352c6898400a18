#!/usr/bin/env bash
# Is stt-agent healthy? Prints one line saying why or why not, and exits:
#   0 healthy   1 unhealthy   2 usage error   3 cannot tell (no systemctl/journalctl)
#
#   healthcheck.sh [--unit NAME] [--minutes N] [--max-restarts N] [--max-errors N]
#                  [--mqtt-topic TOPIC [--mqtt-host HOST] [--mqtt-port PORT] [--mqtt-max-age S]]
#
# Checks, in order:
#   1. `systemctl is-active` is "active" (not starting, failed or stopped);
#   2. the status line the agent sends (STATUS=) does not say "stalled" (the watchdog is about to fire);
#   3. the journal of the last N minutes (default 10): no watchdog timeouts, at most --max-restarts
#      restarts (default 0) and at most --max-errors error-level entries (default 0);
#   4. optional, TOPIC being the agent's <prefix>/<device>/health (needs mosquitto_sub, from
#      mosquitto-clients, and python3): the retained health snapshot is at most --mqtt-max-age
#      seconds old (default 100: the agent republishes it every mqtt.health_interval_s, 30 s) and
#      says nothing unhealthy, and the retained <prefix>/<device>/status beside it is not
#      "offline" (the broker's Last Will when the agent's connection dies). An unreachable broker
#      is reported, not counted as unhealthy.
# Reading another unit's journal needs root or the systemd-journal/adm group.
set -euo pipefail

UNIT=stt-agent MINUTES=10 MAX_RESTARTS=0 MAX_ERRORS=0 TOPIC="" HOST=localhost PORT=1883 MAX_AGE=100
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) UNIT=${2:?--unit needs a NAME}; shift ;;
    --minutes) MINUTES=${2:?--minutes needs a number}; shift ;;
    --max-restarts) MAX_RESTARTS=${2:?--max-restarts needs a number}; shift ;;
    --max-errors) MAX_ERRORS=${2:?--max-errors needs a number}; shift ;;
    --mqtt-topic) TOPIC=${2:?--mqtt-topic needs a topic}; shift ;;
    --mqtt-host) HOST=${2:?--mqtt-host needs a host}; shift ;;
    --mqtt-port) PORT=${2:?--mqtt-port needs a port}; shift ;;
    --mqtt-max-age) MAX_AGE=${2:?--mqtt-max-age needs seconds}; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;  # the header above
    *) echo "healthcheck.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for n in "$MINUTES" "$MAX_RESTARTS" "$MAX_ERRORS" "$PORT" "$MAX_AGE"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "healthcheck.sh: expected a number, got '$n'" >&2; exit 2; }
done

unhealthy() { echo "unhealthy: $UNIT: $*"; exit 1; }
command -v systemctl >/dev/null 2>&1 || { echo "unknown: $UNIT: systemctl not found"; exit 3; }

# 1. Running?
state=$(systemctl is-active "$UNIT.service" 2>/dev/null || true)
case "$state" in
  active) ;;
  activating) unhealthy "starting (loading the model, or restarting after a failure)" ;;
  failed)
    result=$(systemctl show -p Result --value "$UNIT.service" 2>/dev/null || true)
    unhealthy "failed (result: ${result:-unknown}; see journalctl -u $UNIT)" ;;
  *) unhealthy "not running (${state:-unknown})" ;;
esac

# 2. What the agent says about itself.
status=$(systemctl show -p StatusText --value "$UNIT.service" 2>/dev/null || true)
case "$status" in
  stalled*) unhealthy "$status" ;;
esac

# 3. The recent journal.
if command -v journalctl >/dev/null 2>&1; then
  since="-${MINUTES}min"
  log=$(journalctl -u "$UNIT.service" --since "$since" -o cat --no-pager -q 2>/dev/null || true)
  watchdogs=$(grep -c "Watchdog timeout" <<<"$log" || true)
  restarts=$(grep -c "Scheduled restart job" <<<"$log" || true)
  [ "$watchdogs" -eq 0 ] || unhealthy "$watchdogs watchdog timeout(s) in the last $MINUTES min (the pipeline stalled)"
  [ "$restarts" -le "$MAX_RESTARTS" ] || unhealthy "restarted $restarts time(s) in the last $MINUTES min"
  errors=$(journalctl -u "$UNIT.service" --since "$since" -p err -o cat --no-pager -q 2>/dev/null || true)
  n_errors=$(grep -c . <<<"$errors" || true)
  if [ "$n_errors" -gt "$MAX_ERRORS" ]; then
    unhealthy "$n_errors error(s) in the last $MINUTES min, last: $(tail -n 1 <<<"$errors" | cut -c1-200)"
  fi
else
  restarts="?"
fi

# 4. What the agent last published (optional).
# The verdict on a retained health payload: "ok", or why not. The agent's snapshot (docs/EVENTS.md)
# carries no verdict of its own, so a stale `ts` is what shows an agent that stopped publishing;
# an explicit `healthy: false` or a status/state word is honoured for other publishers.
judge_health() {
  python3 -c '
import json, sys, time
raw, max_age = sys.stdin.read().strip(), float(sys.argv[1])
try:
    m = json.loads(raw)
except ValueError:
    m = raw
if not isinstance(m, dict):
    bad = str(m).lower() in ("offline", "unhealthy", "stalled", "error", "failed", "down")
    print("says " + raw[:200] if bad else "ok")
    sys.exit()
word = str(m.get("status", m.get("state", ""))).lower()
if m.get("healthy") is False or word in ("offline", "unhealthy", "stalled", "error", "failed", "down"):
    print("says " + raw[:200])
elif isinstance(m.get("ts"), (int, float)) and time.time() - m["ts"] > max_age:
    print("was published %.0f s ago (the agent republishes it every mqtt.health_interval_s)" % (time.time() - m["ts"]))
else:
    print("ok")
' "$MAX_AGE"
}
mqtt=""
if [ -n "$TOPIC" ]; then
  if ! command -v mosquitto_sub >/dev/null 2>&1; then
    mqtt=", health topic not checked (no mosquitto_sub: apt-get install mosquitto-clients)"
  elif ! command -v python3 >/dev/null 2>&1; then
    mqtt=", health topic not checked (no python3)"
  elif msg=$(mosquitto_sub -h "$HOST" -p "$PORT" -t "$TOPIC" -C 1 -W 3 2>/dev/null) && [ -n "$msg" ]; then
    verdict=$(judge_health <<<"$msg")
    [ "$verdict" = ok ] || unhealthy "health topic $TOPIC $verdict"
    if [[ "$TOPIC" == */health ]]; then
      status_topic=${TOPIC%/health}/status
      online=$(mosquitto_sub -h "$HOST" -p "$PORT" -t "$status_topic" -C 1 -W 2 2>/dev/null || true)
      [ "$online" != offline ] || unhealthy "$status_topic says offline"
    fi
    mqtt=", health topic ok${online:+, status $online}"
  else
    mqtt=", broker $HOST:$PORT unreachable or no retained message on $TOPIC"
  fi
fi

since_ts=$(systemctl show -p ActiveEnterTimestamp --value "$UNIT.service" 2>/dev/null || true)
echo "healthy: $UNIT active${since_ts:+ since $since_ts}, $restarts restart(s) in the last $MINUTES min${status:+, status: $status}$mqtt"
