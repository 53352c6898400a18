#!/usr/bin/env bash
# FunASR's own OpenAI-compatible server (funasr-server, funasr 1.4.16) in the foreground on 127.0.0.1:PORT, CPU,
# THREADS torch threads, serving the model directory built by scripts/build_funasr_peer_model.py.
# The upload benchmark's peer: scripts/bench_uploads.py --peer-command "bash scripts/run_funasr_peer.sh {port} {threads}"
#
#   usage: run_funasr_peer.sh PORT [THREADS]
#   FUNASR_PEER_ENV    the peer's virtual environment (default /work/peer-env); nothing of this repository's is used
#   FUNASR_PEER_MODEL  its model directory (default /work/peer-model)
set -euo pipefail

port=${1:?usage: run_funasr_peer.sh PORT [THREADS]}
threads=${2:-2}
env_dir=${FUNASR_PEER_ENV:-/work/peer-env}
model=${FUNASR_PEER_MODEL:-/work/peer-model}

[[ -x "$env_dir/bin/funasr-server" ]] || { echo "run_funasr_peer: no $env_dir/bin/funasr-server (see docs/benchmarks/openai-peer.md)" >&2; exit 2; }
[[ -f "$model/model.pt" && -f "$model/config.yaml" ]] || { echo "run_funasr_peer: no model.pt/config.yaml in $model" >&2; exit 2; }

# funasr-server passes no thread count: FunASR's AutoModel then sets torch to its default ncpu of 4, unless the
# model's config.yaml says otherwise. So the server gets a view of the model directory (links to its files) whose
# config.yaml adds ncpu.
view=${TMPDIR:-/tmp}/funasr-peer-model.$port
rm -rf "$view"
mkdir -p "$view"
for f in "$model"/*; do
    [[ $(basename "$f") == config.yaml ]] || ln -s "$(readlink -f "$f")" "$view/"
done
{ cat "$model/config.yaml"; printf '\nncpu: %d\n' "$threads"; } > "$view/config.yaml"

export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
# Loopback only, CPU; --model-path loads the local directory (no hub download, no VAD model: one decode per upload).
exec "$env_dir/bin/funasr-server" --host 127.0.0.1 --port "$port" --device cpu --model-path "$view"
