"""Command line: `stt-agent run|serve|transcribe|check-config|health|model` (also `python -m agent`).

Exit codes (agent/errors.py; README's table): 0 ok, 1 failed (some inputs, an unhealthy agent, a
model fetch), 2 usage (a flag's value included), 66 an input missing or corrupt, 69 something outside
unavailable, 70 internal error, 78 invalid configuration, 130 interrupted, 141 stdout closed by its
reader (e.g. `| head`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from agent import __version__
from agent.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOFTWARE, AgentError

log = logging.getLogger(__name__)
MODEL_HELP = "model directory, or its .onnx file to load that one (overrides recognizer.model_dir)"
CONFIG_HELP = "config file (default: $STT_AGENT_CONFIG, else ./config.yaml, else /etc/stt-agent/config.yaml)"
DESCRIPTION = ("On-device speech recognition with SenseVoiceSmall: text, emotion, language and audio event. "
               "Commands: run (listen to a microphone, file or pipe), serve (audio streams from devices), "
               "transcribe (audio files), check-config, health (the running agent's verdict), model (fetch, list, "
               "optimize).")
EPILOG = ("exit codes: 0 ok, 1 failed (some inputs, an unhealthy agent, a model fetch), 2 usage, 66 an input missing "
          "or corrupt, 69 something outside unavailable, 70 a bug, 78 invalid configuration, 130 interrupted, "
          "141 stdout closed. `stt-agent COMMAND --help` for each command.")
# The flag that sets each setting, to name in a message about its value.
FLAG_OF = {"recognizer.model_dir": "--model", "recognizer.providers": "--provider",
           "recognizer.precision": "--precision", "recognizer.cpu.threads": "--threads",
           "recognizer.language": "--language", "recognizer.allowed_languages": "--allowed-languages",
           "audio.input": "--input", "vad.kind": "--vad", "offline.batch_size": "--batch-size",
           "server.host": "--host", "server.port": "--port", "recognizer.hotwords": "--hotwords",
           "recognizer.hotwords_file": "--hotwords-file"}
# numpy's import starts an OpenBLAS thread per core (60-100 ms of every start here) and nothing on
# the audio or decode path calls BLAS. A default only: a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _load_settings(args):
    """The settings from the config file every command finds the same way (agent.settings.find_config)."""
    from agent import settings

    path, origin = settings.find_config(args.config)
    args.config_source = (path, origin)
    return settings.load(path)


def _split(value: str):
    return [v.strip() for v in value.split(",") if v.strip()]


def _apply_recognizer_flags(rec, args):
    """Command-line flags override the config file."""
    if args.model is not None:
        rec.model_dir = args.model
    if args.provider is not None:
        rec.providers = _split(args.provider)
    if args.precision is not None:
        rec.precision = args.precision
    if args.threads is not None:
        rec.cpu.threads = args.threads
    if args.language is not None:
        rec.language = args.language
    if args.allowed_languages is not None:
        rec.allowed_languages = _split(args.allowed_languages)
    if args.itn is not None:
        rec.use_itn = args.itn


def _recheck(settings_obj):
    """Flags bypass the YAML loader, so validate the merged settings the same way.

    The file and the environment passed the loader already, so what fails now is a flag's value (or a
    flag against the file, e.g. --language ja with allowed_languages set): usage, exit 2, naming the flag.
    """
    import dataclasses

    from agent.config_schema import build
    from agent.errors import UsageError

    problems = []
    build(type(settings_obj), dataclasses.asdict(settings_obj), problems=problems)
    if problems:
        raise UsageError([_name_flag(p) for p in problems])


def _name_flag(problem: str) -> str:
    """"recognizer.cpu.threads: 0 is out of range ..." -> "--threads (recognizer.cpu.threads): 0 is ..."."""
    key, _, rest = problem.partition(":")
    flag = FLAG_OF.get(key.split("[", 1)[0])
    return f"{flag} ({key}):{rest}" if flag else f"command line: {problem}"


def cmd_transcribe(args) -> int:
    from agent.errors import UsageError
    from agent.offline.transcribe import STDIN, AudioFileError, OutputError, Outputs, Transcriber

    settings = _load_settings(args)
    rec_settings = settings.recognizer
    _apply_recognizer_flags(rec_settings, args)
    if args.batch_size is not None:
        settings.offline.batch_size = args.batch_size
    if args.vad is not None:
        settings.vad.kind = args.vad
    if args.hotwords is not None:
        rec_settings.hotwords = _split(args.hotwords)
    if args.hotwords_file is not None:
        rec_settings.hotwords_file = args.hotwords_file
    _recheck(settings)
    fmt = "json" if args.json else (args.format or "text")
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json and --format {args.format}: give one of them")
    if args.files.count(STDIN) > 1:
        raise UsageError("- (standard input) is given more than once: it can be read only once")
    output_dir = Path(args.output_dir) if args.output_dir else None
    outputs = Outputs(fmt, args.tokens, args.segments, output_dir)
    if output_dir is not None:
        if fmt == "text":
            raise UsageError("--output-dir needs --format (json, srt, vtt, tsv or txt)")
        if not output_dir.is_dir():
            raise UsageError(f"--output-dir {output_dir}: no such directory")
        writers = {}
        for path in args.files:
            other = writers.setdefault(outputs.target(path), path)
            if other != path:
                raise UsageError(f"{other} and {path} would both be written to {outputs.target(path)}")
    rec_settings.warmup = False  # a batch tool: the first file is the warm-up, and waiting would only add time
    loading = _BackgroundLoad(rec_settings)  # ONNX Runtime releases the GIL while it builds the session
    # The progress line would cut into segment lines that go to stderr, unless asked for.
    show_progress = args.progress or (not args.quiet and sys.stderr.isatty()
                                      and outputs.segment_stream is not sys.stderr)
    transcriber = Transcriber(loading.result, settings, outputs, progress=sys.stderr if show_progress else None)
    failures = []
    for path in args.files:
        try:
            transcriber.transcribe(path)
        except (AudioFileError, OutputError) as exc:
            loading.result()  # a model that cannot load is the one error worth reporting
            failures.append(exc)
            transcriber.failed(path, exc)
    if not failures:
        return EXIT_OK
    if len(args.files) > 1:
        print(f"error: {len(failures)} of {len(args.files)} files failed", file=sys.stderr)
    # Every file failed: the first failure's own code (66: missing, unreadable, corrupt or not audio), as
    # `run` exits on its input. Some failed: 1, the others' results stand.
    return failures[0].exit_code if len(failures) == len(args.files) else EXIT_FAILED


class _BackgroundLoad:
    """load_recognizer in a thread, so reading the first file overlaps the model load."""

    def __init__(self, settings):
        import threading

        self._settings = settings
        self._value = self._error = None
        self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._thread.start()

    def _load(self):
        from agent.recognizer import load_recognizer

        try:
            self._value = load_recognizer(self._settings)
        except BaseException as exc:  # re-raised in the caller's thread, where the CLI reports it
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _apply_log_flags(settings, args):
    """-q: warnings and errors only, whatever logging.level says (-v lowers it in setup_logging)."""
    if getattr(args, "log_quiet", False) and settings.logging.level in ("debug", "info"):
        settings.logging.level = "warning"


def _run_settings(args):
    """The config file with run's command-line flags applied on top, validated."""
    settings = _load_settings(args)
    _apply_log_flags(settings, args)
    _apply_recognizer_flags(settings.recognizer, args)
    if args.input is not None:
        settings.audio.input = args.input
    if args.fast:
        settings.audio.realtime = False
    if args.vad is not None:
        settings.vad.kind = args.vad
    _recheck(settings)
    return settings


def cmd_run(args) -> int:
    from agent.app import Agent

    settings = _run_settings(args)
    to_stdout = _events_to_stdout(args.events, settings.mqtt.enabled)  # a usage error costs no model load
    return Agent(settings, config_path=args.config_source[0], events_to_stdout=to_stdout, verbose=args.verbose,
                 reload_settings=lambda: _run_settings(args)).run()


def cmd_serve(args) -> int:
    from agent.app import Agent

    def settings_of():
        settings = _load_settings(args)
        _apply_log_flags(settings, args)
        _apply_recognizer_flags(settings.recognizer, args)
        server = settings.server
        # serve must serve something: the WebSocket streams unless only Wyoming is set up (Home Assistant's
        # setup has no tokens file, and the streams cannot start without one).
        if not server.wyoming.enabled or server.tokens_file or server.auth == "none":
            server.enabled = True
        if args.host is not None:
            settings.server.host = args.host
        if args.port is not None:
            settings.server.port = args.port
        if args.vad is not None:
            settings.vad.kind = args.vad
        _recheck(settings)
        return settings

    settings = settings_of()
    return Agent(settings, config_path=args.config_source[0], events_to_stdout=False, verbose=args.verbose,
                 reload_settings=settings_of, local_audio=False).run()


def _events_to_stdout(events: str | None, mqtt_enabled: bool) -> bool:
    """Whether events are written to stdout as JSON lines (--events, checked before anything loads)."""
    from agent.errors import ConfigError, UsageError
    from agent.service.logging import journal_stream

    if events not in (None, "-", "mqtt"):
        raise UsageError(f"--events {events}: expected - (JSON lines on stdout) or mqtt")
    if events == "mqtt" and not mqtt_enabled:
        raise ConfigError("--events mqtt: mqtt.enabled is false; set it to true (and mqtt.host) in the config")
    if events is not None:
        return events == "-"
    # Under systemd stdout is the journal: events (speech text included) do not belong there.
    return not mqtt_enabled and not journal_stream(sys.stdout)


def cmd_check_config(args) -> int:
    from agent import settings
    from agent.errors import ConfigError

    path, _ = settings.find_config(args.config)
    if path is None:
        raise ConfigError(f"no config file: give --config PATH or set {settings.CONFIG_ENV} (looked for "
                          f"{' and '.join(settings.CONFIG_SEARCH)})")
    loaded = settings.load(path)
    _check_named_files(loaded)
    print(f"{path}: OK")
    return EXIT_OK


def _check_named_files(settings) -> None:
    """Read the files the config names that run and serve would refuse: a short token in
    server.tokens_file stops serve only after the model load, and its check is that same load."""
    server = settings.server
    if server.tokens_file and server.auth == "token":
        from agent.server.auth import Tokens

        Tokens.load(server.tokens_file)
    mqtt = settings.mqtt
    if mqtt.enabled and mqtt.username and mqtt.password_file:  # not password_env: this shell's may differ
        from agent.mqtt.connection import read_password

        read_password(mqtt)


def cmd_health(args) -> int:
    from agent.errors import ConfigError
    from agent.service import health_file

    if args.file:
        path = Path(args.file)
    else:
        setting = _load_settings(args).watchdog.health_file
        path = health_file.resolve(setting, config_path=args.config_source[0], reading=True)
    if path is None:
        raise ConfigError("watchdog.health_file is empty: the agent writes no health file to check")
    healthy, why = health_file.judge(path)
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}", flush=True)
    return EXIT_OK if healthy else EXIT_FAILED


def _add_recognizer_flags(parser):
    parser.add_argument("--model", metavar="PATH", help=MODEL_HELP)
    parser.add_argument("--provider", help="providers to try in order, e.g. cuda,cpu")
    parser.add_argument("--precision", choices=("auto", "int8", "fp32", "fp16"))
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--language", help="fixed language (zh, en, yue, ja, ko) or auto")
    parser.add_argument("--allowed-languages", metavar="LIST", help="with auto: detect only among these, e.g. zh,en")
    itn = parser.add_mutually_exclusive_group()
    itn.add_argument("--itn", dest="itn", action="store_true", default=None, help="punctuation and digits (default)")
    itn.add_argument("--no-itn", dest="itn", action="store_false", help="plain words, no punctuation")


def _add_model_optimize(sub):
    op = sub.add_parser(
        "optimize", help="save a CPU-optimized copy of the configured model, which loads ~40%% faster",
        description="Load the model file the config names on the CPU provider and save ONNX Runtime's optimized "
                    "graph to recognizer.cpu.optimized_cache_dir. Later loads with providers [cpu] use it (same "
                    "output, about 60% of the load time). On x86-64 with VNNI the int8 model's uint8 weights are "
                    "stored as int8 in it: the same numbers, about 70% of the decode time. Needs about twice the "
                    "memory of a normal load, once.")
    op.add_argument("--config", help=CONFIG_HELP)
    op.add_argument("--model", metavar="PATH", help=MODEL_HELP)
    op.add_argument("--precision", choices=("auto", "int8", "fp32", "fp16"))
    op.add_argument("--force", action="store_true", help="build it again even if an up-to-date copy exists")


def _cmd_model(args) -> int:
    if args.model_command == "optimize":
        return cmd_optimize(args)
    from agent.model_fetch import command

    return command.run(args)


def cmd_optimize(args) -> int:
    from agent.recognizer import ort_cache
    from agent.recognizer.model_dir import locate

    settings = _load_settings(args)
    rec = settings.recognizer
    if args.model is not None:
        rec.model_dir = args.model
    if args.precision is not None:
        rec.precision = args.precision
    _recheck(settings)
    files = locate(rec.model_dir, rec.precision, "cpu")
    done = ort_cache.build(files.onnx, rec.cpu.optimized_cache_dir, force=args.force)
    print(done["optimized"], flush=True)
    if done["up_to_date"]:
        print(f"the optimized copy of {files.onnx} is up to date (--force builds it again)", file=sys.stderr)
        return EXIT_OK
    signed = (f"; {done['signed_tensors']} uint8 weight tensors stored as int8 (the same output, the faster x86 "
              "kernels)") if done.get("signed_tensors") else ""
    print(f"optimized copy of {files.onnx} written ({done['bytes'] / 2**20:.1f} MiB, {done['runtime']}): it loads "
          f"in {done['load_ms']} ms{signed}", file=sys.stderr)
    for path in done["removed"]:
        print(f"removed the stale copy {path}", file=sys.stderr)
    if rec.providers != ["cpu"]:
        print(f"note: recognizer.providers is {rec.providers}: the copy is used only when cpu is the only provider",
              file=sys.stderr)
    return EXIT_OK


VERBOSE_HELP = "more log output (-vv for debug)"
QUIET_HELP = "warnings and errors only"


def _add_log_flags(parser):
    """-v/-q after the command too (`stt-agent run -v`); own dests, so the command's defaults do not
    overwrite what was given before it (argparse copies a subparser's defaults over the top level's)."""
    parser.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", dest="sub_quiet", action="store_true", help=QUIET_HELP)


def build_parser(argv=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stt-agent", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"stt-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", dest="log_quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = sub.add_parser("transcribe", help="transcribe audio files of any length (WAV, FLAC, Ogg, MP3, ...; - for "
                                           "stdin), one result per file",
                        description="Each file is cut into utterances at the VAD's pauses and decoded in batches, "
                                    "with memory that does not grow with its length. Plain text and JSON of a file "
                                    "no longer than segmenter.max_utterance_s come from one pass over it.")
    tr.add_argument("files", nargs="+", metavar="FILE",
                    help="audio files: WAV (int, float, mu-law, A-law), FLAC, Ogg Vorbis/Opus, MP3, AIFF, ... at any "
                         "rate and channel count; - reads one from stdin")
    tr.add_argument("--config", help=CONFIG_HELP)
    _add_recognizer_flags(tr)
    tr.add_argument("--json", action="store_true", help="one JSON line per file, with every field and its segments")
    tr.add_argument("--format", choices=("json", "srt", "vtt", "tsv", "txt"),
                    help="output format (default: a text line per file)")
    tr.add_argument("--output-dir", metavar="DIR", help="write FILE's result to DIR/<name>.<format> instead of stdout")
    tr.add_argument("--segments", action="store_true",
                    help="each segment as a JSON line as soon as it is decoded: on stdout (instead of the text line "
                         "per file), or on stderr when stdout carries srt, vtt, tsv or txt")
    tr.add_argument("--tokens", action="store_true", help="tokens with their start/end seconds (text and segments)")
    tr.add_argument("--batch-size", type=int, metavar="N", help="segments per model run (overrides offline.batch_size)")
    tr.add_argument("--vad", choices=("silero", "energy"), help="the VAD that cuts files into utterances")
    tr.add_argument("--hotwords", metavar="PHRASES",
                    help="phrases to favour, comma-separated, each 'phrase' or 'phrase:weight' (weight in (0, 10], "
                         "default 1), e.g. \"Kitchen Light:2,dimmer\" (overrides recognizer.hotwords)")
    tr.add_argument("--hotwords-file", metavar="FILE",
                    help="more phrases to favour, one per line (overrides recognizer.hotwords_file)")
    quiet = tr.add_mutually_exclusive_group()
    quiet.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    quiet.add_argument("--progress", action="store_true",
                       help="a progress line on stderr even when it is not a terminal")
    tr.set_defaults(func=cmd_transcribe)

    rn = sub.add_parser(
        "run", help="listen (microphone, WAV file, named pipe or stdin) and print events as JSON lines",
        description="Listen to one audio source, cut it into utterances with the VAD, and give each utterance's "
                    "events (speech_start, partial, speech_end, final, emotion, language; docs/EVENTS.md) as JSON "
                    "lines on stdout, or to the MQTT broker when mqtt.enabled. SIGTERM or Ctrl-C stops it after "
                    "the pending finals. Settings: the config's audio, vad, segmenter, pipeline and mqtt sections; "
                    "flags override them.")
    rn.add_argument("--config", help=CONFIG_HELP)
    rn.add_argument("--input", metavar="SOURCE",
                    help="mic (the default: audio.device), a WAV file, a named pipe (FIFO), or - for stdin; stdin "
                         "and pipes take raw s16le 16 kHz mono PCM or a WAV stream (its header gives rate and "
                         "channels, e.g. arecord's output). Overrides audio.input")
    rn.add_argument("--fast", action="store_true", help="read a WAV file as fast as possible, not in real time")
    rn.add_argument("--vad", choices=("silero", "energy"), help="voice activity detector")
    rn.add_argument("--events", default=None,
                    help="- = JSON lines on stdout (default when mqtt.enabled is false), mqtt = only to the broker")
    _add_recognizer_flags(rn)
    _add_log_flags(rn)
    rn.set_defaults(func=cmd_run)

    sv = sub.add_parser("serve", help="take audio streams from devices over WebSocket (no microphone)",
                        description="Devices stream audio to ws://HOST:PORT/ws/stt/<device_id> and get their events "
                                    "back (docs/EVENTS.md); all streams share one recognizer. Settings: the server "
                                    "section of the config (auth, tokens_file, tls, limits).")
    sv.add_argument("--config", help=CONFIG_HELP)
    sv.add_argument("--host", help="address to listen on (overrides server.host)")
    sv.add_argument("--port", type=int, help="TCP port (overrides server.port)")
    sv.add_argument("--vad", choices=("silero", "energy"), help="voice activity detector of every stream")
    _add_recognizer_flags(sv)
    _add_log_flags(sv)
    sv.set_defaults(func=cmd_serve)

    cc = sub.add_parser("check-config", help="validate a config file: exit 0, or 78 with the problems")
    cc.add_argument("--config", help=CONFIG_HELP)
    _add_log_flags(cc)
    cc.set_defaults(func=cmd_check_config)

    hc = sub.add_parser("health", help="is the running agent healthy? one line; exit 0 if so, else 1",
                        description="Reads the health file the running agent rewrites every few seconds "
                                    "(watchdog.health_file): for a container HEALTHCHECK or a Kubernetes probe.")
    hc.add_argument("--config", help=CONFIG_HELP)
    hc.add_argument("--file", help="the health file (default: the one watchdog.health_file names for this config)")
    _add_log_flags(hc)
    hc.set_defaults(func=cmd_health)

    argv = sys.argv[1:] if argv is None else argv
    if "model" in argv or not {"-h", "--help"}.isdisjoint(argv) or not argv:
        from agent.model_fetch import command  # ~50 ms of imports that transcribe and run never need

        command.add_subparser(sub, extra=_add_model_optimize).set_defaults(func=_cmd_model)
    else:
        sub.add_parser("model", help="download, list and optimize SenseVoiceSmall ONNX models")
    return parser


def main(argv=None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "sub_verbose", 0)
    args.log_quiet = args.log_quiet or getattr(args, "sub_quiet", False)
    if args.verbose and args.log_quiet:
        parser.error("-v and -q: give one of them")
    from agent.service.logging import setup_early_logging

    setup_early_logging(args.verbose)
    try:
        return args.func(args)
    except AgentError as exc:
        for line in getattr(exc, "problems", None) or [str(exc)]:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `stt-agent transcribe *.wav | head -1`: the reader left, which is no bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit-time flush fails again
        return EXIT_BROKEN_PIPE
    except Exception:  # a bug: keep the traceback for the report, but say what to do
        log.exception("internal error")
        print("error: internal error (a bug in stt-agent; please report it with the traceback above)",
              file=sys.stderr)
        return EXIT_SOFTWARE
