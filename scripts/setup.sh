#!/usr/bin/env bash
# Set up a virtualenv in .venv with stt-agent installed (editable) and the right ONNX Runtime.
#   bash scripts/setup.sh            runtime only (onnxruntime-gpu when an NVIDIA GPU is visible, else onnxruntime)
#   bash scripts/setup.sh --cpu|--gpu  force one runtime (never both: they install the same module)
#   bash scripts/setup.sh --test     also the test tools (pytest, hypothesis, onnx)
#   bash scripts/setup.sh --export   also torch + onnx for scripts/export_onnx.py
# A box with a microphone also needs the PortAudio library: sudo apt-get install libportaudio2
# (WAV files, stdin, named pipes and `stt-agent serve` work without it). The end of the run says if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime="" extras=()
for arg in "$@"; do
  case "$arg" in
    --cpu) runtime=cpu ;;
    --gpu) runtime=gpu ;;
    --test) extras+=(test) ;;
    --export) extras+=(export) ;;
    --bench) extras+=(bench) ;;
    *) echo "setup.sh: unknown option $arg (expected --cpu, --gpu, --test, --export, --bench)" >&2; exit 2 ;;
  esac
done
if [ -z "$runtime" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then runtime=gpu; else runtime=cpu; fi
fi
# journald fields need systemd-python, which builds from source: take it when libsystemd's headers are here
# (apt-get install libsystemd-dev pkg-config gcc python3-dev), else logs go to stderr lines.
if pkg-config --exists libsystemd 2>/dev/null; then extras+=(journald); fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# --export: install a CPU build of torch first if you want one; a plain `torch` requirement may pull a CUDA build.
list=$(IFS=,; echo "$runtime${extras[*]:+,${extras[*]}}")
.venv/bin/python -m pip install -q -e ".[$list]"
echo "setup.sh: installed stt-agent[$list] into .venv ($(.venv/bin/python -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'))"
# sounddevice finds PortAudio when it is imported: the microphone's one system library.
if ! .venv/bin/python -c 'import sounddevice' >/dev/null 2>&1; then
  echo "setup.sh: no PortAudio library: microphone input (stt-agent run, audio.input: mic) needs it: sudo apt-get install libportaudio2" >&2
fi
