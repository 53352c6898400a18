#!/usr/bin/env bash
# The CPU container image, built and run: docker/Dockerfile on a locally imported Debian 12 base
# (registries cannot be reached from CI), run with a mounted config, model and named pipe, as a
# non-root user; finals reach a Mosquitto broker, the HEALTHCHECK turns healthy, `docker stop`
# publishes `offline` within its 10 s.
#
#   check_container.sh --base TAR --work DIR --python PY [--keep]
#
#   --base TAR    a Debian 12 minbase root (debootstrap --variant=minbase bookworm), as a tarball
#   --python PY   a Python with onnx, to build the tiny test model
#   --keep        keep the images, the volume and DIR
# Needs root, docker (dockerd is started here if none runs, and stopped again), mosquitto,
# mosquitto-clients and espeak-ng on the host.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE="" WORK="" PY="" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=${2:?--base needs a tarball}; shift ;;
    --work) WORK=${2:?--work needs a directory}; shift ;;
    --python) PY=${2:?--python needs a path}; shift ;;
    --keep) KEEP=1 ;;
    *) echo "check_container.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$BASE" ] && [ -n "$WORK" ] && [ -n "$PY" ] \
  || { echo "usage: check_container.sh --base TAR --work DIR --python PY" >&2; exit 2; }

BASE_IMAGE=local/debian:bookworm-minbase
IMAGE=stt-agent:ci-cpu
NAME=stt-agent-ci
CACHE_VOL=stt-agent-ci-cache
DEVICE=ci-docker
TOPIC=stt-agent/$DEVICE
LOGS=$WORK/logs
mkdir -p "$LOGS"

DOCKERD_PID="" BROKER_PID="" SUB_PID=""
cleanup() {
  local rc=$?
  if docker info >/dev/null 2>&1; then
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    if [ "$KEEP" = 0 ]; then
      docker volume rm "$CACHE_VOL" >/dev/null 2>&1 || true
      docker rmi "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
      docker image prune -f >/dev/null 2>&1 || true  # the build stage's untagged image
    fi
  fi
  stop_pid "$SUB_PID"
  stop_pid "$BROKER_PID"
  stop_pid "$DOCKERD_PID" 30
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK/context" "$WORK/run"; fi
  exit $rc
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  dockerd > "$LOGS/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  wait_until 60 docker info || fail "dockerd did not start" "$LOGS/dockerd.log"
fi

# ------------------------------------------------------------------------------------- build
t=$(now)
docker import - "$BASE_IMAGE" < "$BASE" > /dev/null
copy_tree "$WORK/context"
# The host's CA bundle, for pip in the build stage only (the final image copies the venv, not this).
cp /etc/ssl/certs/ca-certificates.crt "$WORK/context/docker/build-ca.crt"
docker build --network host -f "$WORK/context/docker/Dockerfile" --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t "$IMAGE" "$WORK/context" > "$LOGS/build.log" 2>&1 || fail "docker build failed" "$LOGS/build.log"
BUILD_S=$(since "$t")
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
SIZE_MB=$((size / 1000000))
runtime=$(sed -n 's/^onnxruntime \([0-9.]* .*\)/\1/p' "$LOGS/build.log" | head -n 1)
pass "docker build -f docker/Dockerfile --build-arg BASE_IMAGE=$BASE_IMAGE: $BUILD_S s; image $SIZE_MB MB (base $((base_size / 1000000)) MB); onnxruntime $runtime"

user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
health=$(docker image inspect -f '{{join .Config.Healthcheck.Test " "}}' "$IMAGE")
[ "$user" = 10001 ] || fail "the image runs as '$user', not the non-root uid 10001"
[[ "$health" == *"-m agent.server.probes"* ]] || fail "the image's HEALTHCHECK is '$health'"
leftovers=$(docker run --rm --user 0 --entrypoint sh "$IMAGE" -c 'find / -xdev \( -name build-ca.crt -o -path /src \) -print; ls /root/.cache 2>/dev/null' || true)
[ -z "$leftovers" ] || fail "the image holds build-stage files: $leftovers"
pass "image: USER $user, HEALTHCHECK $health, no build CA, sources or pip cache in it"

# ------------------------------------------------------------------------------------- run
RUN=$WORK/run
mkdir -p "$RUN/etc" "$RUN/models"
"$PY" "$HELPER" tiny-model "$RUN/models/sensevoice-small-int8" > "$LOGS/model.log" 2>&1 \
  || fail "cannot build the tiny model with $PY" "$LOGS/model.log"
python3 "$HELPER" speech-wav "$RUN/speech.wav" > "$LOGS/speech.log" 2>&1 || fail "espeak-ng could not make the speech" "$LOGS/speech.log"
chmod -R a+rX "$RUN"
start_broker "$WORK/broker"
subscribe "$LOGS/mqtt.log" "$TOPIC/#"
# The image's own config, with what an operator sets per device: the broker, its name, the pipe.
docker run --rm --entrypoint cat "$IMAGE" /etc/stt-agent/config.yaml > "$RUN/etc/config.yaml"
sed -i -e "0,/^  enabled: false\$/s//  enabled: true/" -e "s/^  host: localhost\$/  host: 127.0.0.1/" \
  -e "s/^  port: 1883\$/  port: $BROKER_PORT/" -e "s/^  device_id: \"\"\$/  device_id: $DEVICE/" \
  -e "s#^  input: mic\$#  input: /var/lib/stt-agent-audio/audio#" "$RUN/etc/config.yaml"
# The host's pipe, as docker/README.md sets it up: writers and the container user meet in group audio.
audio_gid=$(getent group audio | cut -d: -f3)
install -d -m 0750 -o root -g audio "$RUN/audio"
mkfifo -m 0660 "$RUN/audio/audio"
chgrp audio "$RUN/audio/audio"
VOLS=(-v "$RUN/etc:/etc/stt-agent:ro" -v "$RUN/models:/var/lib/stt-agent/models:ro" -v "$CACHE_VOL:/var/cache/stt-agent")
docker run --rm "${VOLS[@]}" "$IMAGE" model optimize --config /etc/stt-agent/config.yaml > "$LOGS/optimize.log" 2>&1 \
  || fail "model optimize in the container failed" "$LOGS/optimize.log"

t=$(now)
docker run -d --name "$NAME" --network host --group-add "$audio_gid" "${VOLS[@]}" \
  -v "$RUN/audio:/var/lib/stt-agent-audio" "$IMAGE" > /dev/null
is_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ]; }
wait_until 60 is_healthy || { docker logs "$NAME" > "$LOGS/container.log" 2>&1; fail "the container did not turn healthy: $(docker inspect -f '{{json .State.Health}}' "$NAME" | cut -c1-300)" "$LOGS/container.log"; }
HEALTHY_S=$(since "$t")
probe=$(docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$NAME" | sed '/^$/d' | tail -n 1)
pass "docker run: HEALTHCHECK healthy $HEALTHY_S s after the start ($probe)"
uids=$(docker top "$NAME" -eo pid,uid,comm | awk 'NR > 1 { print $2 }' | sort -u | paste -sd' ')
[ "$uids" = 10001 ] || fail "processes in the container run as uid(s) $uids"
wait_until 20 has_msgs "$LOGS/mqtt.log" "$TOPIC/status" online 1 || fail "no 'online' on $TOPIC/status" "$LOGS/mqtt.log"
docker logs "$NAME" > "$LOGS/container.log" 2>&1
grep -q 'optimized copy) loaded on cpu' "$LOGS/container.log" || fail "the optimized copy in the cache volume was not used" "$LOGS/container.log"
# mqtt.outbox: auto is the disk in the image's STATE_DIRECTORY volume
outbox=$(docker exec "$NAME" sh -c 'ls /var/lib/stt-agent/state/mqtt-outbox-*.sqlite3') \
  || fail "no MQTT outbox file in the state volume (/var/lib/stt-agent/state)" "$LOGS/container.log"
grep -q "disk outbox .* failed" "$LOGS/container.log" && fail "the disk outbox fell back to memory" "$LOGS/container.log"

timeout 30 setpriv --reuid=65534 --regid=65534 --groups="$audio_gid" --inh-caps=-all \
  sh -c "cat '$RUN/speech.wav' > '$RUN/audio/audio'" || fail "could not write into the pipe as a member of group audio"
wait_until 30 has_msgs "$LOGS/mqtt.log" "$TOPIC/stt/final" '{' 1 || fail "no final on $TOPIC/stt/final" "$LOGS/mqtt.log"
final=$(last_payload "$LOGS/mqtt.log" "$TOPIC/stt/final")
pass "runs as uid 10001 only; model optimized copy from the cache volume; disk outbox $outbox; a host writer (uid nobody, group audio) on the mounted pipe -> final on $TOPIC/stt/final: ${final:0:80}..."

# ------------------------------------------------------------------------------------- stop
mark=$(wc -l < "$LOGS/mqtt.log")
t=$(now)
docker stop "$NAME" > /dev/null
STOP_S=$(since "$t")
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "docker stop: the agent exited $code (137: killed after the 10 s timeout)" "$LOGS/container.log"
offline_after() { tail -n +"$((mark + 1))" "$LOGS/mqtt.log" | awk -v t="$TOPIC/status" '$3 == t && $4 == "offline" { f = 1 } END { exit !f }'; }
wait_until 2 offline_after || fail "no 'offline' on $TOPIC/status after docker stop" "$LOGS/mqtt.log"
pass "docker stop: 'offline' published and exit 0 in $STOP_S s (limit 10 s)"
echo "timings: docker build $BUILD_S s, healthy after $HEALTHY_S s, docker stop $STOP_S s; image $SIZE_MB MB"
