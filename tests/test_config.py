"""Tests for agent.settings / agent.config_schema: broken YAML files are written here and every problem
must come back as a ConfigError (exit code 78) naming the key path, the line, the bad value and what is
allowed."""
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.errors import EXIT_CONFIG, ConfigError
from agent.recognizer.settings import LANGUAGES, MODEL_EMOTIONS, PRECISIONS, PROVIDERS, RecognizerSettings
from agent.settings import Settings, load

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(tmp_path, text):
    """Load a config expected to be broken; return its problems (each already checked to name the file)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.exit_code == EXIT_CONFIG == 78
    assert err.problems, "a ConfigError must carry at least one problem"
    for p in err.problems:
        assert p.startswith(f"{path}"), p
        assert "\n" not in p
    assert str(err) == "; ".join(err.problems)
    return err.problems


def only_problem(tmp_path, text):
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    return problems[0]


def assert_names(msg, *parts):
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


# ---------------------------------------------------------------------------------------------
# Unknown keys
# ---------------------------------------------------------------------------------------------

def test_unknown_top_level_key(tmp_path):
    msg = only_problem(tmp_path, """
        # a comment
        recogniser:
          language: en
    """)
    assert_names(msg, "recogniser (line 2)", "unknown key", "did you mean 'recognizer'?", "known keys here: audio, ")


def test_unknown_nested_key_lists_known_keys(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          cpu:
            thread: 4
    """)
    assert_names(msg, "recognizer.cpu.thread (line 3)", "unknown key", "known keys here: optimized_cache_dir, threads")


def test_unknown_key_in_recognizer_lists_all_keys(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          languages: [en]
    """)
    assert_names(msg, "recognizer.languages (line 2)", "unknown key")
    for name in (f.name for f in dataclasses.fields(RecognizerSettings)):
        assert name in msg.split("known keys here:")[1]


# ---------------------------------------------------------------------------------------------
# Wrong types
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_value, path, line, expected, got", [
    ('cpu:\n    threads: "4"', "recognizer.cpu.threads", 3, "expected an integer", "got '4'"),
    ("cpu:\n    threads: 2.5", "recognizer.cpu.threads", 3, "expected an integer", "got 2.5"),
    ("cpu:\n    threads: true", "recognizer.cpu.threads", 3, "expected an integer", "got True"),
    ("use_itn: 1", "recognizer.use_itn", 2, "expected true or false", "got 1"),
    ('warmup: "no"', "recognizer.warmup", 2, "expected true or false", "got 'no'"),
    ("tensorrt:\n    fp16: 0", "recognizer.tensorrt.fp16", 3, "expected true or false", "got 0"),
    ("language: [en]", "recognizer.language", 2, "expected a string", "got ['en']"),
    ("model_dir: 5", "recognizer.model_dir", 2, "expected a string", "got 5"),
    ("providers: cpu", "recognizer.providers", 2, "expected a list of strings", "got 'cpu'"),
    ("emotion_map: [happy]", "recognizer.emotion_map", 2, "expected a mapping of strings", "got ['happy']"),
    ("emotion_map:\n    happy: 1", "recognizer.emotion_map", 2, "expected a mapping of strings", "got {'happy': 1}"),
])
def test_wrong_type(tmp_path, yaml_value, path, line, expected, got):
    msg = only_problem(tmp_path, "recognizer:\n  " + yaml_value + "\n")
    assert_names(msg, f"{path} (line {line})", expected, got)


def test_wrong_type_of_a_list_item_names_the_item_and_its_line(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          providers:
            - cuda
            - 7
    """)
    assert_names(msg, "recognizer.providers[1] (line 4)", "expected a string", "got 7")


@pytest.mark.parametrize("text, path, line", [
    ("recognizer: 5\n", "recognizer", 1),
    ("recognizer:\n  cpu: 4\n", "recognizer.cpu", 2),
    ("recognizer:\n  tensorrt: [a]\n", "recognizer.tensorrt", 2),
])
def test_section_that_is_not_a_mapping(tmp_path, text, path, line):
    msg = only_problem(tmp_path, text)
    assert_names(msg, f"{path} (line {line})", "expected a mapping of settings", "got ")


# ---------------------------------------------------------------------------------------------
# Ranges and choices
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_value, path, line, bad, allowed", [
    ("cpu:\n    threads: 0", "recognizer.cpu.threads", 3, "0 is out of range", "from 1 to 64"),
    ("cpu:\n    threads: 65", "recognizer.cpu.threads", 3, "65 is out of range", "from 1 to 64"),
    ("cuda:\n    device_id: -1", "recognizer.cuda.device_id", 3, "-1 is out of range", "from 0 to 63"),
    ("tensorrt:\n    workspace_mb: 10", "recognizer.tensorrt.workspace_mb", 3, "10 is out of range",
     "from 64 to 65536"),
])
def test_out_of_range(tmp_path, yaml_value, path, line, bad, allowed):
    msg = only_problem(tmp_path, "recognizer:\n  " + yaml_value + "\n")
    assert_names(msg, f"{path} (line {line})", bad, "allowed: " + allowed)


@pytest.mark.parametrize("yaml_value, path, bad, allowed", [
    ("providers: [gpu]", "recognizer.providers", "'gpu'", PROVIDERS),
    ("providers: [cpu, GPU]", "recognizer.providers", "'GPU'", PROVIDERS),
    ("language: xx", "recognizer.language", "'xx'", ("auto",) + LANGUAGES),
    ("language: de", "recognizer.language", "'de'", ("auto",) + LANGUAGES),
    ("precision: int4", "recognizer.precision", "'int4'", PRECISIONS),
    ("allowed_languages: [zh, fr]", "recognizer.allowed_languages", "'fr'", LANGUAGES),
])
def test_bad_choice(tmp_path, yaml_value, path, bad, allowed):
    msg = only_problem(tmp_path, "recognizer:\n  " + yaml_value + "\n")
    assert_names(msg, f"{path} (line 2)", f"{bad} is not one of: {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------
# Cross-field checks
# ---------------------------------------------------------------------------------------------

def test_duplicated_provider(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          providers: [cuda, cpu, cuda]
    """)
    assert_names(msg, "recognizer.providers (line 2)", "twice", "['cuda', 'cpu', 'cuda']")


def test_no_provider(tmp_path):
    msg = only_problem(tmp_path, "recognizer:\n  providers: []\n")
    assert_names(msg, "recognizer.providers (line 2)", "at least one", "tensorrt, cuda, cpu")


def test_emotion_map_with_unknown_model_label(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          emotion_map:
            happy: joy
            joyful: joy
    """)
    assert_names(msg, "recognizer.emotion_map (line 2)", "'joyful'", "not a model emotion",
                 ", ".join(MODEL_EMOTIONS))


def test_emotion_map_labels_are_case_insensitive(tmp_path):
    s = load(write(tmp_path, "recognizer:\n  emotion_map: {HAPPY: joy, Sad: down, neutral: calm}\n"))
    assert s.recognizer.emotion_map == {"HAPPY": "joy", "Sad": "down", "neutral": "calm"}


def test_allowed_languages_with_a_fixed_language(tmp_path):
    msg = only_problem(tmp_path, """
        recognizer:
          language: en
          allowed_languages: [zh, yue]
    """)
    assert_names(msg, "recognizer.allowed_languages (line 3)", "['zh', 'yue']", "only applies with language: auto",
                 "'en'")


# ---------------------------------------------------------------------------------------------
# Files that are not valid YAML / not readable / not a mapping
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ("recognizer:\n  cpu: {threads: 2\n  language: en\n", 3),
    ("recognizer:\n  language: en\n warmup: false\n", 3),
    ("recognizer:\n\tlanguage: en\n", 2),
    ('recognizer:\n  model_dir: "unterminated\n', 3),
])
def test_invalid_yaml_reports_the_line(tmp_path, text, line):
    msg = only_problem(tmp_path, text)
    assert_names(msg, f"(line {line})", "invalid YAML")


def test_multiple_documents_are_invalid(tmp_path):
    msg = only_problem(tmp_path, "recognizer: {}\n---\nrecognizer: {}\n")
    assert_names(msg, "(line 2)", "invalid YAML")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.exit_code == 78
    assert_names(str(info.value), str(path), "no such config file")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.exit_code == 78
    assert_names(str(info.value), str(tmp_path), "cannot read config file")


def test_not_utf8(tmp_path):
    msg = only_problem(tmp_path, b"recognizer:\n  model_dir: caf\xe9\n")
    assert_names(msg, "(line 2)", "not UTF-8", "0xe9")


@pytest.mark.parametrize("text, got", [
    ("- recognizer\n- cpu\n", "['recognizer', 'cpu']"),
    ("just a string\n", "'just a string'"),
    ("42\n", "42"),
])
def test_top_level_not_a_mapping(tmp_path, text, got):
    msg = only_problem(tmp_path, text)
    assert_names(msg, "top level", "expected a mapping of settings", got)


def test_key_given_twice(tmp_path):
    problems = problems_of(tmp_path, """
        recognizer:
          use_itn: true
          use_itn: false
        recognizer:
          warmup: false
    """)
    assert len(problems) == 2, problems
    assert_names(problems[0], "recognizer.use_itn (line 3)", "twice")
    assert_names(problems[1], "recognizer (line 4)", "twice")


# ---------------------------------------------------------------------------------------------
# Several problems at once
# ---------------------------------------------------------------------------------------------

def test_several_problems_are_all_reported(tmp_path):
    problems = problems_of(tmp_path, """
        recognizer:
          precision: int4
          providers: [gpu, cpu]
          cpu:
            threads: 0
            affinity: 1
          cuda:
            device_id: "0"
          language: xx
          use_itn: 1
          emotion_map: {happy: joy}
        mqt:
          host: x
    """)
    text = "\n".join(problems)
    assert len(problems) == 8, problems
    for part in ("recognizer.precision (line 2)", "'int4'",
                 "recognizer.providers (line 3)", "'gpu'",
                 "recognizer.cpu.threads (line 5)", "0 is out of range",
                 "recognizer.cpu.affinity (line 6)", "unknown key",
                 "recognizer.cuda.device_id (line 8)", "got '0'",
                 "recognizer.language (line 9)", "'xx'",
                 "recognizer.use_itn (line 10)", "got 1",
                 "mqt (line 12)"):
        assert part in text, (part, problems)


def test_cross_field_problem_reported_next_to_a_problem_in_another_section(tmp_path):
    problems = problems_of(tmp_path, """
        recognizer:
          providers: [cpu, cpu]
          language: en
          allowed_languages: [zh]
          cpu:
            threads: 0
        extra: 1
    """)
    text = "\n".join(problems)
    assert len(problems) == 4, problems
    assert_names(text, "recognizer.providers (line 2)", "twice", "recognizer.allowed_languages (line 4)",
                 "recognizer.cpu.threads (line 6)", "extra (line 7)")


def test_cross_field_checks_do_not_run_on_values_of_the_wrong_type(tmp_path):
    # "cpu" is a string, not a list: one type problem, no confusing "lists a provider twice" on its letters
    msg = only_problem(tmp_path, "recognizer:\n  providers: ccppuu\n")
    assert_names(msg, "recognizer.providers (line 2)", "expected a list of strings")


# ---------------------------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "recognizer:\n", "recognizer: {}\n",
                                  "recognizer:\n  cpu:\n  tensorrt: {}\n"])
def test_empty_config_gives_defaults(tmp_path, text):
    assert load(write(tmp_path, text)) == Settings()


def test_no_path_gives_defaults():
    assert load() == Settings()
    assert load(None) == Settings()


def test_defaults():
    r = Settings().recognizer
    assert r.providers == ["cpu"]
    assert r.language == "auto" and r.allowed_languages == [] and r.emotion_map == {}
    assert r.precision == "auto"
    assert r.cpu.threads == 2
    assert list(r.check()) == []


def test_valid_config_values(tmp_path):
    s = load(write(tmp_path, """
        recognizer:
          model_dir: /opt/models/sv
          precision: fp16
          providers: [tensorrt, cuda, cpu]
          cpu: {threads: 4}
          cuda: {device_id: 1}
          tensorrt:
            fp16: false
            engine_cache_dir: /tmp/trt
            workspace_mb: 1024
          language: auto
          allowed_languages: [zh, en]
          use_itn: false
          allow_emo_unknown: true
          emotion_map: {happy: joy, sad: down}
          warmup: false
    """))
    r = s.recognizer
    assert isinstance(r, RecognizerSettings)
    assert r.model_dir == "/opt/models/sv" and r.precision == "fp16"
    assert r.providers == ["tensorrt", "cuda", "cpu"]
    assert r.cpu.threads == 4 and r.cuda.device_id == 1
    assert (r.tensorrt.fp16, r.tensorrt.engine_cache_dir, r.tensorrt.workspace_mb) == (False, "/tmp/trt", 1024)
    assert r.allowed_languages == ["zh", "en"]
    assert (r.use_itn, r.allow_emo_unknown, r.warmup) == (False, True, False)
    assert r.emotion_map == {"happy": "joy", "sad": "down"}


def test_path_may_be_a_string(tmp_path):
    assert load(str(write(tmp_path, "recognizer: {language: ja}\n"))).recognizer.language == "ja"


def test_shipped_config_loads():
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED} not written yet")
    s = load(SHIPPED)
    assert isinstance(s, Settings)


# ---------------------------------------------------------------------------------------------
# Defaults are not shared; every setting is documented
# ---------------------------------------------------------------------------------------------

def test_mutable_defaults_are_not_shared(tmp_path):
    a, b = Settings(), Settings()
    assert a.recognizer is not b.recognizer and a.recognizer.cpu is not b.recognizer.cpu
    a.recognizer.providers.append("cuda")
    a.recognizer.allowed_languages.append("zh")
    a.recognizer.emotion_map["happy"] = "joy"
    a.recognizer.cpu.threads = 8
    for other in (b, Settings(), load(write(tmp_path, ""))):
        r = other.recognizer
        assert r.providers == ["cpu"] and r.allowed_languages == [] and r.emotion_map == {}
        assert r.cpu.threads == 2
    c, d = RecognizerSettings(), RecognizerSettings()
    assert c.providers is not d.providers and c.emotion_map is not d.emotion_map
    assert c.allowed_languages is not d.allowed_languages


def _settings_classes(cls=Settings, seen=None):
    seen = [] if seen is None else seen
    seen.append(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            _settings_classes(type(default), seen)
    return seen


def test_every_setting_has_a_doc():
    classes = _settings_classes()
    assert RecognizerSettings in classes and len(classes) >= 5
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_shipped_config_documents_every_key():
    """config.yaml is the users' documentation: every settings key appears in it, with a comment."""
    import dataclasses

    import yaml

    from agent import settings as S

    shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text(encoding="utf-8"))

    def walk(obj, data, path):
        for f in dataclasses.fields(obj):
            assert f.name in data, f"config.yaml lacks {path}{f.name}"
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, data[f.name], f"{path}{f.name}.")
            else:
                assert data[f.name] == value, f"config.yaml's {path}{f.name} is not the default"

    walk(S.Settings(), shipped, "")


def test_shipped_config_is_generated_from_the_settings():
    """Every key's comment is its doc string: `python -m agent.config_doc > config.yaml` after changing one."""
    from agent.config_doc import render

    assert SHIPPED.read_text(encoding="utf-8") == render(), "run: python -m agent.config_doc > config.yaml"


def test_environment_overrides_deployment_values(tmp_path):
    from agent.config_schema import load_settings
    from agent.errors import ConfigError
    from agent.settings import Settings

    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  host: localhost\n", encoding="utf-8")
    env = {"STT_AGENT_MQTT__HOST": "broker.lan", "STT_AGENT_MQTT__PORT": "8883", "STT_AGENT_MQTT__DEVICE_ID": "007",
           "STT_AGENT_MQTT__TLS__ENABLED": "true", "STT_AGENT_CONFIG": "ignored", "OTHER__X": "1"}
    settings = load_settings(Settings, path, env=env)
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.device_id) == ("broker.lan", 8883, "007")
    assert settings.mqtt.tls.enabled is True
    assert load_settings(Settings, None, env={"STT_AGENT_RECOGNIZER__CPU__THREADS": "4"}).recognizer.cpu.threads == 4
    with pytest.raises(ConfigError) as info:
        load_settings(Settings, path, env={"STT_AGENT_MQTT__HOTS": "x", "STT_AGENT_MQTT__PORT": "abc"})
    text = str(info.value)
    assert "environment STT_AGENT_MQTT__HOTS: mqtt.hots is not a setting" in text
    assert "mqtt.port (from environment STT_AGENT_MQTT__PORT): expected an integer, got 'abc'" in text


@pytest.mark.parametrize("value, expected", [("zh,en", ["zh", "en"]), ("zh, en", ["zh", "en"]), ("zh", ["zh"]),
                                             ("[zh, en]", ["zh", "en"]), ("", []), ("zh,,en,", ["zh", "en"])])
def test_list_settings_from_the_environment_take_commas_as_the_cli_does(value, expected):
    """STT_AGENT_RECOGNIZER__ALLOWED_LANGUAGES=zh,en, as --allowed-languages zh,en; a YAML list works too."""
    from agent.config_schema import load_settings

    env = {"STT_AGENT_RECOGNIZER__ALLOWED_LANGUAGES": value, "STT_AGENT_RECOGNIZER__PROVIDERS": "cuda,cpu"}
    recognizer = load_settings(Settings, None, env=env).recognizer
    assert (recognizer.allowed_languages, recognizer.providers) == (expected, ["cuda", "cpu"])


def test_a_bad_item_of_a_list_from_the_environment_is_named():
    from agent.config_schema import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(Settings, None, env={"STT_AGENT_RECOGNIZER__ALLOWED_LANGUAGES": "zh,fr"})
    assert info.value.problems == ["(defaults): recognizer.allowed_languages (from environment "
                                   "STT_AGENT_RECOGNIZER__ALLOWED_LANGUAGES): 'fr' is not one of: zh, en, yue, ja, ko"]


def test_importing_the_settings_leaves_the_runtime_parts_unimported():
    # transcribe's start-up: each part's settings module without its package's sources, VAD, yaml, numpy or
    # ONNX Runtime (agent.recognizer.settings sits in a package whose decoder needs both).
    code = ("import sys, agent.settings; "
            "print(sorted(m for m in ('yaml', 'agent.audio.mic', 'agent.audio.sources', 'agent.listening.vad', "
            "'agent.service.watchdog', 'numpy', 'agent.recognizer.decoding', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", ["vad:\n  threshold", "audio:\n  ring_seconds", "segmenter:\n  max_utterance_s",
                                 "pipeline:\n  drain_timeout_s"])
def test_non_finite_floats_are_refused(tmp_path, key, value):
    """NaN passes every range check (all comparisons are false): the agent ran deaf or crashed."""
    problems = problems_of(tmp_path, f"{key}: {value}\n")
    assert problems == [f"{tmp_path / 'config.yaml'}: {key.replace(':' + chr(10) + '  ', '.')} (line 2): "
                        f"expected a finite number, got {float(value.replace('.', '', 1))!r}"]


def test_non_finite_floats_from_the_environment_are_refused():
    from agent.config_schema import load_settings

    with pytest.raises(ConfigError, match=r"vad.threshold \(from environment STT_AGENT_VAD__THRESHOLD\): expected "
                                          r"a finite number, got nan"):
        load_settings(Settings, None, env={"STT_AGENT_VAD__THRESHOLD": ".nan"})


def test_on_off_unquoted_is_accepted_and_other_booleans_say_how_to_quote(tmp_path):
    assert load(write(tmp_path, "logging:\n  journald: off\n")).logging.journald == "off"
    assert load(write(tmp_path, "logging:\n  journald: on\n")).logging.journald == "on"
    problems = problems_of(tmp_path, "mqtt:\n  device_id: no\n")
    assert problems[0].endswith("mqtt.device_id (line 2): expected a string, got false (YAML reads unquoted "
                                "yes/no/on/off/true/false as true or false: quote the value)")


def _problems(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.problems


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    """A 'billion laughs': 9 levels of 10 aliases each, 10^9 values once expanded."""
    levels = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    problems = _problems(tmp_path, "x:\n" + "".join(f"  {line}\n" for line in levels))
    assert len(problems) == 1 and "expands to more than 10000 values (YAML aliases repeating" in problems[0]


def test_deep_nesting_is_refused_with_its_line(tmp_path):
    problems = _problems(tmp_path, "a: " + "[" * 40 + "]" * 40 + "\n")
    assert len(problems) == 1 and "(line 1): nested deeper than 32 levels" in problems[0]
    problems = _problems(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")  # libyaml's own limit answers first
    assert len(problems) == 1 and "(line 1): invalid YAML: exceeded maximum nesting depth" in problems[0]


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    problems = _problems(tmp_path, "# padding\n" * 10_000_000)
    assert problems == [f"{tmp_path / 'config.yaml'}: over 256 KiB; a config file is a few KB (is this the right file?)"]


def test_a_huge_wrong_value_is_not_echoed_back(tmp_path):
    problems = problems_of(tmp_path, "vad:\n  kind: " + "x" * 200_000 + "\n")
    assert len(problems) == 1 and len(problems[0]) < 300 and "(200002 characters)" in problems[0]
    problems = problems_of(tmp_path, "vad:\n  " + "k" * 1000 + ": 1\n")
    assert len(problems[0]) < 500 and "(1000 characters)" in problems[0]
