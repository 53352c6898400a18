"""The journal checks of the deployment test (tests/system/deploy_checks.py) catch what they claim to.

The systemd check runs them on a real journal, where everything is as it should be; these feed them
journals with each defect in turn (a record sent twice, a record on stderr as well, speech text,
a final without its fields), so a check that passes vacuously would show here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("deploy_checks", Path(__file__).parent / "system" / "deploy_checks.py")
deploy_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deploy_checks)


def entry(message, *, pid="100", transport="journal", mono=1_000_000, line="10", **fields):
    return {"MESSAGE": message, "_PID": pid, "_TRANSPORT": transport, "__MONOTONIC_TIMESTAMP": str(mono),
            "CODE_FILE": "agent/x.py", "CODE_LINE": line, "_SOURCE_REALTIME_TIMESTAMP": str(mono + 7), **fields}


def good() -> list[dict]:
    return [
        entry("Starting stt-agent.service", pid="1", transport="journal"),
        entry("/etc/stt-agent/config.yaml: OK", pid="99", transport="stdout"),
        entry("configuration: /etc/stt-agent/config.yaml", mono=1_000_000, line="1", EVENT="config"),
        entry("model m loaded on cpu", mono=1_100_000, line="2"),
        entry("listening on /var/lib/stt-agent-audio/audio", mono=1_200_000, line="3", EVENT="ready",
              PROVIDER="cpu"),
        entry("final of utterance 1: 400.0 ms after end of speech", mono=2_000_000, line="4", EVENT="final",
              UTTERANCE_ID="1", LATENCY_MS="400.0", DECODE_MS="9.1", LANGUAGE="en", EMOTION="happy"),
        entry("Fatal Python error: Aborted", transport="stdout", mono=3_000_000),
        entry('  File "agent/pipeline/live.py", line 66 in run', transport="stdout", mono=3_000_001),
    ]


def check(tmp_path, entries, finals=1):
    path = tmp_path / "journal.json"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    deploy_checks.journal(str(path), finals)


def test_a_clean_journal_passes(tmp_path, capsys):
    check(tmp_path, good())
    assert "4 records from 1 agent process(es), each once" in capsys.readouterr().out


@pytest.mark.parametrize("defect, message", [
    (lambda es: es + [entry("model m loaded on cpu", mono=1_110_000, line="2")], "twice within 50 ms"),
    (lambda es: es + [entry("INFO agent.cli: model m loaded on cpu", transport="stdout")], "to the journal and to stderr"),
    (lambda es: es + [entry("WARNING agent.x: something", transport="stdout")], "instead of a journal record"),
    (lambda es: es + [entry('{"type": "final", "text": "x"}', transport="stdout")], "the journal holds"),
    (lambda es: [dict(e, TEXT="hello world你好") if e.get("EVENT") == "final" else e for e in es], "the journal holds"),
    (lambda es: [{k: v for k, v in e.items() if k != "LATENCY_MS"} for e in es], "lacks LATENCY_MS"),
    (lambda es: [e for e in es if e.get("EVENT") != "ready"], "EVENT=ready) 0 times"),
    (lambda es: [dict(e, _TRANSPORT="stdout") for e in es], "not in use"),
])
def test_each_defect_fails(tmp_path, defect, message, capsys):
    with pytest.raises(SystemExit):
        check(tmp_path, defect(good()))
    assert message in capsys.readouterr().err


def test_finals_must_match_the_broker(tmp_path, capsys):
    with pytest.raises(SystemExit):
        check(tmp_path, good(), finals=2)
    assert "1 EVENT=final entries in the journal, but 2 finals reached the broker" in capsys.readouterr().err


def test_ready_gating(tmp_path, capsys):
    """Active only after the model load was logged: Type=notify. Active at fork, before it: not gated."""
    path = tmp_path / "journal.json"
    path.write_text("".join(json.dumps(dict(e, _SYSTEMD_INVOCATION_ID="inv")) + "\n" for e in good()))
    deploy_checks.ready(str(path), "inv", exec_start=500_000, active_enter=1_210_000)
    assert "model loaded 0.60 s -> active (READY=1) 0.71 s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        deploy_checks.ready(str(path), "inv", exec_start=500_000, active_enter=510_000)
    assert "not gated on READY=1" in capsys.readouterr().err
