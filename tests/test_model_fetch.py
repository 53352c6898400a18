"""Tests for agent.model_fetch against a real local HTTP server (tests/http_fixture.py)."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from pathlib import Path

import pytest

from agent import cli, model_fetch
from agent.model_fetch import ModelFetchError, UnknownModelError, fetch_model, list_models

try:
    from tests.http_fixture import FakeHub, git_blob_id
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from http_fixture import FakeHub, git_blob_id

REPO = "org/sense-voice-test"
REV = "0123456789abcdef0123456789abcdef01234567"
MODEL = random.Random(1).randbytes(300_000)
TOKENS = "".join(f"tok{i} {i}\n" for i in range(2000)).encode()
MODEL_PATH = f"/{REPO}/resolve/{REV}/model.int8.onnx"
TOKENS_PATH = f"/{REPO}/resolve/{REV}/tokens.txt"
API_PATH = f"/api/models/{REPO}/revision/{REV}"
REPO_MANIFEST = Path(__file__).resolve().parent.parent / "models" / "manifest.json"


@pytest.fixture
def hub():
    h = FakeHub()
    h.add_repo(REPO, REV, {"model.int8.onnx": MODEL, "tokens.txt": TOKENS}, lfs={"model.int8.onnx"})
    h.start()
    yield h
    h.stop()


def _file(name, data, *, pinned=True):
    f = {"name": name, "url": f"{{hf_endpoint}}/{REPO}/resolve/{REV}/{name}"}
    if pinned:
        f.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(), source="test data")
    return f


def _manifest(tmp_path, *, pinned=True, extra=None):
    models = {
        "tiny": {
            "description": "test model",
            "flavour": "sherpa-onnx",
            "precision": "int8",
            "target": "tiny-model",
            "source": {"hub": "huggingface", "repo": REPO, "revision": REV},
            "files": [_file("model.int8.onnx", MODEL, pinned=pinned), _file("tokens.txt", TOKENS, pinned=pinned)],
        },
        "other": {
            "description": "another",
            "flavour": "funasr",
            "precision": "int8",
            "files": [_file("tokens.txt", TOKENS)],
        },
    }
    models.update(extra or {})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "default": "tiny", "models": models}))
    return path


def _fetch(hub, tmp_path, name="tiny", **kw):
    kw.setdefault("manifest_path", tmp_path / "manifest.json")
    kw.setdefault("endpoint", hub.url)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 5.0)
    lines = kw.pop("lines", [])
    kw.setdefault("progress", lines.append)
    return fetch_model(name, tmp_path / "models", **kw)


def _leftovers(models: Path):
    return sorted(p.name for p in models.iterdir() if p.name.startswith((".tmp-", ".old-")))


# ------------------------------------------------------------------------------------ success


def test_fetch_installs_verified_files(hub, tmp_path):
    _manifest(tmp_path)
    lines = []
    target = _fetch(hub, tmp_path, lines=lines)
    assert target == tmp_path / "models" / "tiny-model"
    assert (target / "model.int8.onnx").read_bytes() == MODEL
    assert (target / "tokens.txt").read_bytes() == TOKENS
    marker = json.loads((target / model_fetch.INSTALL_MARKER).read_text())
    assert [f["name"] for f in marker["files"]] == ["model.int8.onnx", "tokens.txt"]
    assert marker["files"][0]["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert not hub.requests_for(API_PATH), "a fully pinned manifest needs no hub look-up"
    assert not (tmp_path / "models" / ".partial" / "tiny").exists()
    assert _leftovers(tmp_path / "models") == []
    assert any("installed at" in line for line in lines)


def test_sizes_and_hashes_come_from_the_hub_when_the_manifest_has_none(hub, tmp_path):
    _manifest(tmp_path, pinned=False)
    target = _fetch(hub, tmp_path)
    assert len(hub.requests_for(API_PATH)) == 1
    assert (target / "model.int8.onnx").read_bytes() == MODEL
    marker = json.loads((target / model_fetch.INSTALL_MARKER).read_text())
    # tokens.txt is a plain git file on the hub: verified by blob id, recorded by its sha256
    assert marker["files"][1] == {
        "name": "tokens.txt",
        "size": len(TOKENS),
        "sha256": hashlib.sha256(TOKENS).hexdigest(),
        "url": hub.url + TOKENS_PATH,
    }


def test_endpoint_comes_from_the_environment(hub, tmp_path, monkeypatch):
    _manifest(tmp_path)
    monkeypatch.setenv("STT_AGENT_HF_ENDPOINT", hub.url)
    target = _fetch(hub, tmp_path, endpoint=None)
    assert (target / "tokens.txt").read_bytes() == TOKENS
    assert hub.requests_for(MODEL_PATH)


def test_hf_endpoint_names_the_mirror_for_the_hub_look_up_and_the_files(hub, tmp_path, monkeypatch):
    """HF_ENDPOINT set after huggingface_hub was imported (it reads the variable once, at import) still counts."""
    importlib.import_module("huggingface_hub")  # first, as a long-lived process would have

    _manifest(tmp_path, pinned=False)
    monkeypatch.delenv("STT_AGENT_HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    target = _fetch(hub, tmp_path, endpoint=None)
    (look_up,) = hub.requests_for(API_PATH)
    assert "hf_hub/" in look_up["user_agent"], "the look-up goes through huggingface_hub"
    assert hub.requests_for(MODEL_PATH) and (target / "model.int8.onnx").read_bytes() == MODEL


def test_a_hub_look_up_answered_5xx_is_retried(hub, tmp_path):
    _manifest(tmp_path, pinned=False)
    hub.statuses[API_PATH] = [503]
    target = _fetch(hub, tmp_path)
    assert [r["status"] for r in hub.requests_for(API_PATH)] == [503, 200]
    assert (target / "tokens.txt").read_bytes() == TOKENS


def test_a_hub_look_up_answered_404_is_final(hub, tmp_path):
    _manifest(tmp_path, pinned=False)
    hub.statuses[API_PATH] = [404]
    with pytest.raises(ModelFetchError) as err:
        _fetch(hub, tmp_path)
    assert f"HTTP 404 (not found) for {hub.url}{API_PATH}?blobs=true" == str(err.value)
    assert len(hub.requests_for(API_PATH)) == 1 and not hub.requests_for(MODEL_PATH)


# ------------------------------------------------------------------------------------- resume


def test_dropped_connection_resumes_with_range(hub, tmp_path):
    _manifest(tmp_path)
    hub.drop_once[MODEL_PATH] = 100_000
    lines = []
    target = _fetch(hub, tmp_path, lines=lines)
    reqs = hub.requests_for(MODEL_PATH)
    assert [r["range"] for r in reqs] == [None, "bytes=100000-"]
    assert [r["status"] for r in reqs] == [200, 206]
    assert sum(r["sent"] for r in reqs) == len(MODEL), "bytes already present were sent again"
    assert (target / "model.int8.onnx").read_bytes() == MODEL
    assert any("resuming" in line for line in lines)


def test_a_body_cut_short_without_content_length_resumes_with_range(hub, tmp_path):
    # the manifest knows the size, so a close before it is a cut, not the end
    _manifest(tmp_path)
    hub.no_length.add(MODEL_PATH)
    hub.drop_once[MODEL_PATH] = 100_000
    target = _fetch(hub, tmp_path)
    reqs = hub.requests_for(MODEL_PATH)
    assert [r["range"] for r in reqs] == [None, "bytes=100000-"]
    assert [r["status"] for r in reqs] == [200, 206]
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_part_file_from_an_earlier_run_is_resumed(hub, tmp_path):
    _manifest(tmp_path)
    part = tmp_path / "models" / ".partial" / "tiny" / "model.int8.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(MODEL[:1234])
    target = _fetch(hub, tmp_path)
    (req,) = hub.requests_for(MODEL_PATH)
    assert req["range"] == "bytes=1234-" and req["status"] == 206 and req["sent"] == len(MODEL) - 1234
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_server_answering_200_to_a_range_restarts_from_zero(hub, tmp_path):
    _manifest(tmp_path)
    part = tmp_path / "models" / ".partial" / "tiny" / "model.int8.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(MODEL[:5000])
    hub.ignore_range.add(MODEL_PATH)
    target = _fetch(hub, tmp_path)
    (req,) = hub.requests_for(MODEL_PATH)
    assert req["range"] == "bytes=5000-" and req["status"] == 200
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_corrupt_part_file_is_redownloaded_once_from_zero(hub, tmp_path):
    _manifest(tmp_path)
    part = tmp_path / "models" / ".partial" / "tiny" / "model.int8.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # wrong bytes from some earlier, broken run
    target = _fetch(hub, tmp_path)
    reqs = hub.requests_for(MODEL_PATH)
    assert [r["range"] for r in reqs] == ["bytes=1000-", None]
    assert (target / "model.int8.onnx").read_bytes() == MODEL


# ---------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("pinned", [True, False], ids=["manifest-hash", "hub-hash"])
def test_hash_mismatch_fails_and_installs_nothing(hub, tmp_path, pinned):
    _manifest(tmp_path, pinned=pinned)
    hub.corrupt.add(MODEL_PATH)
    with pytest.raises(ModelFetchError) as err:
        _fetch(hub, tmp_path)
    msg = str(err.value)
    assert "model.int8.onnx" in msg and hub.url + MODEL_PATH in msg
    assert hashlib.sha256(MODEL).hexdigest() in msg
    bad = bytes([MODEL[0] ^ 0xFF]) + MODEL[1:]
    assert hashlib.sha256(bad).hexdigest() in msg
    assert "\n" not in msg
    models = tmp_path / "models"
    assert not (models / "tiny-model").exists()
    assert not (models / ".partial" / "tiny" / "model.int8.onnx.part").exists(), "a bad file must not be resumed"
    assert _leftovers(models) == []


def test_404_is_a_final_error_naming_the_url(hub, tmp_path):
    extra = {"missing": {"files": [dict(_file("gone.onnx", b"x"), url=f"{{hf_endpoint}}/{REPO}/resolve/{REV}/gone.onnx")]}}
    _manifest(tmp_path, extra=extra)
    with pytest.raises(ModelFetchError) as err:
        _fetch(hub, tmp_path, name="missing")
    assert "404" in str(err.value) and f"{REPO}/resolve/{REV}/gone.onnx" in str(err.value)
    assert len(hub.requests_for(f"/{REPO}/resolve/{REV}/gone.onnx")) == 1, "404 must not be retried"
    assert not (tmp_path / "models" / "missing").exists()


def test_5xx_is_retried_then_succeeds(hub, tmp_path):
    _manifest(tmp_path)
    hub.statuses[MODEL_PATH] = [500, 503]
    target = _fetch(hub, tmp_path)
    assert [r["status"] for r in hub.requests_for(MODEL_PATH)] == [500, 503, 200]
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_persistent_5xx_gives_up(hub, tmp_path):
    _manifest(tmp_path)
    hub.statuses[TOKENS_PATH] = [502] * 10
    with pytest.raises(ModelFetchError) as err:
        _fetch(hub, tmp_path, retries=2)
    assert "tokens.txt" in str(err.value) and "3 attempts" in str(err.value)
    assert len(hub.requests_for(TOKENS_PATH)) == 3
    assert not (tmp_path / "models" / "tiny-model").exists()


def test_failed_fetch_keeps_verified_files_and_never_a_partial_target(hub, tmp_path):
    _manifest(tmp_path)
    hub.corrupt.add(TOKENS_PATH)  # the model downloads and verifies, then tokens.txt fails
    with pytest.raises(ModelFetchError, match="tokens.txt"):
        _fetch(hub, tmp_path)
    models = tmp_path / "models"
    assert not (models / "tiny-model").exists()
    assert (models / ".partial" / "tiny" / "model.int8.onnx").read_bytes() == MODEL
    hub.corrupt.clear()
    before = len(hub.requests_for(MODEL_PATH))
    target = _fetch(hub, tmp_path)
    assert len(hub.requests_for(MODEL_PATH)) == before, "the verified model was downloaded again"
    assert (target / "tokens.txt").read_bytes() == TOKENS


def test_hub_revision_mismatch_is_refused(tmp_path):
    h = FakeHub()
    h.add_repo(REPO, REV, {"model.int8.onnx": MODEL, "tokens.txt": TOKENS}, sha="f" * 40)
    h.start()
    try:
        _manifest(tmp_path, pinned=False)
        with pytest.raises(ModelFetchError, match="not the pinned revision"):
            _fetch(h, tmp_path)
    finally:
        h.stop()


# --------------------------------------------------------------------------- present / force


def test_already_present_downloads_nothing(hub, tmp_path):
    _manifest(tmp_path)
    _fetch(hub, tmp_path)
    n = len(hub.log)
    lines = []
    target = _fetch(hub, tmp_path, lines=lines)
    assert len(hub.log) == n
    assert any("already present" in line for line in lines)
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_force_replaces_an_existing_install(hub, tmp_path):
    _manifest(tmp_path)
    target = _fetch(hub, tmp_path)
    (target / "stale.txt").write_text("from the old install")
    (target / "tokens.txt").write_bytes(b"damaged")
    _fetch(hub, tmp_path, force=True)
    assert not (target / "stale.txt").exists()
    assert (target / "tokens.txt").read_bytes() == TOKENS
    assert len(hub.requests_for(MODEL_PATH)) == 2
    assert _leftovers(tmp_path / "models") == []


def test_a_different_directory_at_the_target_is_not_overwritten_without_force(hub, tmp_path):
    _manifest(tmp_path)
    target = tmp_path / "models" / "tiny-model"
    target.mkdir(parents=True)
    (target / "model.int8.onnx").write_bytes(b"my own export")
    with pytest.raises(ModelFetchError, match="--force"):
        _fetch(hub, tmp_path)
    assert (target / "model.int8.onnx").read_bytes() == b"my own export"
    assert not hub.requests_for(MODEL_PATH)
    _fetch(hub, tmp_path, force=True)
    assert (target / "model.int8.onnx").read_bytes() == MODEL


def test_interrupted_force_swap_is_put_back(hub, tmp_path):
    _manifest(tmp_path)
    target = _fetch(hub, tmp_path)
    old = tmp_path / "models" / ".old-tiny-model-abc123"
    target.rename(old)  # as if a --force swap died between its two renames
    n = len(hub.log)
    _fetch(hub, tmp_path)
    assert len(hub.log) == n and (target / "model.int8.onnx").read_bytes() == MODEL and not old.exists()


# ------------------------------------------------------------------------------ names and CLI


def test_unknown_name_lists_the_known_ones(hub, tmp_path):
    _manifest(tmp_path)
    with pytest.raises(UnknownModelError) as err:
        _fetch(hub, tmp_path, name="nope")
    assert "other" in str(err.value) and "tiny" in str(err.value)
    assert not hub.log


def test_cli_exit_codes(hub, tmp_path, monkeypatch, capsys):
    manifest = _manifest(tmp_path)
    monkeypatch.setenv("STT_AGENT_HF_ENDPOINT", hub.url)
    models = str(tmp_path / "models")
    common = ["--models-dir", models, "--manifest", str(manifest)]

    assert cli.main(["model", "fetch", "nope", *common]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "other, tiny" in err

    assert cli.main(["model", "fetch", "tiny", *common]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "tiny-model")

    assert cli.main(["model", "list", *common]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "[default, installed]" in out and "other" in out

    hub.statuses[MODEL_PATH] = [404]
    assert cli.main(["model", "fetch", "tiny", "--force", *common]) == 1
    assert "404" in capsys.readouterr().err
    assert (tmp_path / "models" / "tiny-model" / "model.int8.onnx").read_bytes() == MODEL, "old install kept"


def test_manifest_without_a_hash_for_a_non_hub_url_is_rejected(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"models": {"x": {"files": [{"name": "a.onnx", "url": "https://example.org/a.onnx"}]}}}))
    with pytest.raises(ModelFetchError, match="size.*sha256"):
        list_models(path)


def test_manifest_rejects_paths_that_escape_the_target(tmp_path):
    path = tmp_path / "manifest.json"
    bad = {"name": "../evil", "url": "https://example.org/a", "size": 1, "sha256": "0" * 64}
    path.write_text(json.dumps({"models": {"x": {"files": [bad]}}}))
    with pytest.raises(ModelFetchError, match="relative file name"):
        list_models(path)


# -------------------------------------------------------------------------- shipped manifest


def test_shipped_manifest_is_valid_and_pinned():
    data = model_fetch.load_manifest(REPO_MANIFEST)
    names = [m["name"] for m in list_models(REPO_MANIFEST)]
    assert data["default"] in names
    assert "sensevoice-small-int8" in names
    for name, entry in data["models"].items():
        assert entry.get("description") and entry.get("flavour") in ("sherpa-onnx", "funasr"), name
        for f in entry["files"]:
            assert "/resolve/main/" not in f["url"], f"{name}/{f['name']}: pin a revision, not main"
            if f.get("sha256"):
                assert f.get("source"), f"{name}/{f['name']}: a pinned hash needs a 'source' note"
    sherpa = {f["name"]: f for f in data["models"]["sensevoice-small-int8"]["files"]}
    assert {"model.int8.onnx", "tokens.txt"} <= set(sherpa)


def test_git_blob_id_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.fixture
def small_disk(tmp_path):
    """A real 128 KiB file system (tmpfs) for the models: the kernel answers ENOSPC when it is full."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): it makes a disk that really fills up")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_that_fills_up_is_said_so_and_the_download_resumes_after(hub, tmp_path, small_disk, monkeypatch):
    """Before: an ENOSPC traceback (exit 70). The 300 KB model cannot fit in 128 KiB; what fits is kept."""
    import subprocess

    _manifest(tmp_path)
    monkeypatch.setattr(model_fetch.download, "DISK_MARGIN_BYTES", -(1 << 30))  # let it start: the disk fills meanwhile
    with pytest.raises(ModelFetchError) as err:
        fetch_model("tiny", small_disk, manifest_path=tmp_path / "manifest.json", endpoint=hub.url, backoff=0.0,
                    timeout=5.0, progress=lambda line: None)
    message = str(err.value)
    assert message.startswith(f"the disk holding {small_disk / '.partial' / 'tiny'} is full: ")
    assert "of model.int8.onnx downloaded and kept; free some space and run the same command again" in message
    kept = (small_disk / ".partial" / "tiny" / "model.int8.onnx.part").stat().st_size
    assert 0 < kept < len(MODEL)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    target = fetch_model("tiny", small_disk, manifest_path=tmp_path / "manifest.json", endpoint=hub.url,
                         backoff=0.0, timeout=5.0, progress=lambda line: None)
    assert (target / "model.int8.onnx").read_bytes() == MODEL
    ranges = [r["range"] for r in hub.requests_for(MODEL_PATH)]
    assert ranges[-1] == f"bytes={kept}-"  # resumed where the full disk stopped it


def test_an_unreachable_hub_is_exit_69_naming_the_mirror_and_the_manual_download(tmp_path, monkeypatch, capsys):
    """Before: `gaierror: [Errno -2]` after 15 s, exit 1. `.invalid` never resolves (RFC 2606)."""
    manifest = _manifest(tmp_path)
    monkeypatch.setenv("STT_AGENT_HF_ENDPOINT", "http://hub.invalid")
    monkeypatch.setattr(model_fetch.download.time, "sleep", lambda s: None)  # the 5 retries' backoff, not the test's time
    code = cli.main(["model", "fetch", "tiny", "--models-dir", str(tmp_path / "models"), "--manifest", str(manifest)])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after a line per retry
    assert code == 69 == model_fetch.HubUnreachableError.exit_code
    assert "cannot reach the model hub: giving up after 5 attempts" in err
    assert "set STT_AGENT_HF_ENDPOINT (or HF_ENDPOINT) to a mirror" in err and "models/README.md" in err


def test_huggingface_hub_is_imported_only_for_a_hub_look_up():
    """The `model` parser and a fetch module load leave it out: only an unpinned file's look-up needs it."""
    import subprocess
    import sys

    code = ("import sys; from agent import cli; cli.build_parser(['model', 'list']); import agent.model_fetch; "
            "print(sorted(m for m in ('huggingface_hub', 'httpx2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_an_unreachable_hub_look_up_is_hub_unreachable(tmp_path):
    """huggingface_hub's connection errors are retried as ours are, then exit 69's error."""
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused, at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    _manifest(tmp_path, pinned=False)
    lines = []
    with pytest.raises(model_fetch.HubUnreachableError) as err:
        fetch_model("tiny", tmp_path / "models", manifest_path=tmp_path / "manifest.json", endpoint=closed,
                    retries=1, backoff=0.0, timeout=5.0, progress=lines.append)
    assert str(err.value).startswith(f"file list of {REPO}@{REV}: cannot reach the model hub: giving up after 2 attempts")
    assert err.value.exit_code == 69 and sum("retrying" in line for line in lines) == 1
