"""deploy/kubernetes: each overlay rendered with kustomize's rules, every object checked against the
Kubernetes API schema (kubernetes-validate, strict), and the things that matter checked one by one.

The overlays are rendered by `render()` below: the part of kustomize this layout uses (resources,
configMapGenerator/secretGenerator with content-hash names and `behavior: replace`, images,
strategic-merge patches, namespace, name references to generated objects). Anything else in a
kustomization.yaml is an error here rather than silently ignored. Where a real kustomize is on the
machine (`kubectl kustomize`, or `kustomize`), its output must equal ours, object for object.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent import settings as agent_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "jetson")
# Rendered and validated like the overlays: the device plugin, and `serve` for many devices.
OTHERS = ("audio-device-plugin", "server")
# The oldest Kubernetes the manifests promise to work with; k3s releases for JetPack 6 are newer.
SCHEMA_VERSION = "1.30"
DUMMY_PASSWORD = "not-a-real-password\n"
DUMMY_TOKENS = "# devices\nnot-a-real-token-0123456789abcdef\n"

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')")


# ------------------------------------------------------------------------------------ the renderer
class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "secretGenerator",
                        "images", "patches"}
GENERATOR_FIELDS = {"name", "files", "behavior"}
# Strategic merge: lists of objects merged by this key (the patchMergeKey of the Kubernetes API types
# under these field names); any other list is replaced whole, as the API's default strategy does.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
              "ports": "containerPort", "imagePullSecrets": "name"}
CLUSTER_SCOPED = {"Namespace", "RuntimeClass", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}


def kustomize_hash(obj: dict) -> str:
    """kustomize's name suffix for a generated ConfigMap/Secret (api/hasher: sha256 of Go's JSON of
    kind, name, data (and a Secret's type), first 10 hex digits with 0 1 3 a e swapped for letters).

    The name is always "": kustomize looks it up as one field literally called "metadata/name", which
    no object has. Checked: kustomize v5.5.0 names ConfigMap x with data {a: b} x-4h2mbtbbt6, the sha
    of the JSON with "name":"" (with "name":"x" it would be x-64686gkt6c).
    """
    doc = {"kind": obj["kind"], "name": "", "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        doc["type"] = obj.get("type", "Opaque")
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # Go's json.Marshal escapes these
        text = text.replace(char, escaped)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def strategic_merge(base, patch, field=None):
    if isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise Unsupported(f"strategic-merge directive in {sorted(patch)}")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(base.get(key), value, key)
        return out
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(base, list):
        key = MERGE_KEYS[field]
        by_key = {item[key]: item for item in base}
        # kustomize (kyaml) lists the patch's elements first, then the base's others, each in its order.
        merged = [strategic_merge(by_key.get(item[key]), item) for item in patch]
        return merged + [item for item in base if item[key] not in {p[key] for p in patch}]
    return copy.deepcopy(patch)


def _load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _generate(kind: str, spec: dict, directory: Path) -> dict:
    extra = set(spec) - GENERATOR_FIELDS
    if extra:
        raise Unsupported(f"{kind} generator fields {sorted(extra)}")
    data = {}
    for entry in spec.get("files", []):
        key, _, name = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        text = (directory / name).read_text(encoding="utf-8")
        data[key] = base64.b64encode(text.encode()).decode() if kind == "Secret" else text
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}, "data": data}
    if kind == "Secret":
        obj["type"] = "Opaque"
    return obj


def _build(directory: Path) -> list[dict]:
    """One kustomization level; generated objects keep their plain name (hashed at the top)."""
    kz = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    extra = set(kz) - KUSTOMIZATION_FIELDS
    if extra:
        raise Unsupported(f"{directory}: kustomization fields {sorted(extra)}")
    objects: list[dict] = []
    for entry in kz.get("resources", []):
        path = (directory / entry).resolve()
        objects += _build(path) if path.is_dir() else [dict(d, _generated=False) for d in _load_yaml_docs(path)]
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in kz.get(field, []):
            made = _generate(kind, spec, directory)
            behavior = spec.get("behavior", "create")
            same = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == spec["name"]]
            if behavior == "create":
                assert not same, f"{directory}: {kind} {spec['name']} generated twice"
                objects.append(dict(made, _generated=True))
            elif behavior in ("replace", "merge"):
                assert same, f"{directory}: behavior {behavior} but no {kind} {spec['name']} in the resources"
                target = same[0]
                target["data"] = made["data"] if behavior == "replace" else {**target["data"], **made["data"]}
            else:
                raise Unsupported(f"generator behavior {behavior}")
    for patch_spec in kz.get("patches", []):
        if set(patch_spec) != {"path"}:
            raise Unsupported(f"patch fields {sorted(patch_spec)} (only path)")
        for patch in _load_yaml_docs(directory / patch_spec["path"]):
            hits = [i for i, o in enumerate(objects) if o["kind"] == patch["kind"]
                    and o["apiVersion"] == patch["apiVersion"] and o["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(hits) == 1, f"patch {patch_spec['path']} matches {len(hits)} objects"
            gen = objects[hits[0]]["_generated"]
            objects[hits[0]] = dict(strategic_merge(objects[hits[0]], patch), _generated=gen)
    if "namespace" in kz:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kz["namespace"]
    for image in kz.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise Unsupported(f"images fields {sorted(image)}")
        for obj in objects:
            for container in _containers(obj):
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    if "digest" in image:
                        container["image"] = f"{new_name}@{image['digest']}"
                    else:
                        container["image"] = f"{new_name}:{image['newTag']}" if "newTag" in image else \
                            (f"{new_name}:{tag}" if tag else new_name)
    return objects


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, _digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None


def _pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return obj["spec"] if obj["kind"] == "Pod" else None


def _containers(obj: dict) -> list[dict]:
    spec = _pod_spec(obj)
    return [] if spec is None else spec.get("initContainers", []) + spec.get("containers", [])


def render(directory: Path) -> list[dict]:
    objects = _build(directory)
    renamed = {}
    for obj in objects:
        if obj.pop("_generated"):
            old = obj["metadata"]["name"]
            obj["metadata"]["name"] = f"{old}-{kustomize_hash(obj)}"
            renamed[(obj["kind"], old)] = obj["metadata"]["name"]
    for obj in objects:
        spec = _pod_spec(obj)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = renamed.get(("ConfigMap", volume["configMap"]["name"]),
                                                          volume["configMap"]["name"])
            if "secret" in volume:
                volume["secret"]["secretName"] = renamed.get(("Secret", volume["secret"]["secretName"]),
                                                             volume["secret"]["secretName"])
            if "projected" in volume:
                raise Unsupported("projected volumes")
        for container in _containers(obj):
            if container.get("envFrom") or any("configMapKeyRef" in e.get("valueFrom", {})
                                               or "secretKeyRef" in e.get("valueFrom", {})
                                               for e in container.get("env", [])):
                raise Unsupported("env references to ConfigMaps/Secrets")
    return objects


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of deploy/kubernetes with the git-ignored mqtt-password a user writes before applying."""
    copy_root = tmp_path_factory.mktemp("kubernetes")
    shutil.copytree(DEPLOY, copy_root, dirs_exist_ok=True)
    (copy_root / "base" / "mqtt-password").write_text(DUMMY_PASSWORD, encoding="utf-8")
    (copy_root / "server" / "tokens").write_text(DUMMY_TOKENS, encoding="utf-8")
    return copy_root


@pytest.fixture(scope="module")
def rendered(tree):
    return {name: render(tree / "overlays" / name) for name in OVERLAYS} | {name: render(tree / name) for name in OTHERS}


def one(objects, kind, name_prefix=""):
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(hits) == 1, f"expected one {kind} {name_prefix!r}, found {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def agent_container(ds):
    return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "stt-agent")


def mount_for(container, volume_name):
    return next(m for m in container["volumeMounts"] if m["name"] == volume_name)


# --------------------------------------------------------------------------------------------- tests
def test_kustomize_hash_matches_a_known_suffix():
    # `kubectl kustomize` (kustomize v5.5.0) on generators named x and s, each from a file a holding "b".
    assert kustomize_hash({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}) == "4h2mbtbbt6"
    secret = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "Yg=="}, "type": "Opaque"}
    assert kustomize_hash(secret) == "k695gkmbtk"


@pytest.mark.parametrize("name", OVERLAYS + OTHERS)
def test_every_object_validates_against_the_api_schema(rendered, name):
    for obj in rendered[name]:
        try:
            kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")


@pytest.mark.parametrize("name", OVERLAYS)
def test_one_non_root_daemonset_per_box(rendered, name):
    ds = one(rendered[name], "DaemonSet", "stt-agent")
    assert ds["metadata"]["namespace"] == "stt-agent"
    pod = ds["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert 29 in sc["supplementalGroups"]  # audio: /dev/snd/* is root:audio
    assert not pod.get("hostNetwork") and pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"]} and not csc.get("privileged")
        assert container["image"] == f"stt-agent:{name}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_config_map_is_a_valid_agent_config(rendered, name, tmp_path, monkeypatch):
    ds = one(rendered[name], "DaemonSet", "stt-agent")
    container = agent_container(ds)
    config_mount = mount_for(container, "config")
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = one(rendered[name], "ConfigMap", volume["configMap"]["name"])
    assert container["args"] == ["run", "--config", f"{config_mount['mountPath']}/config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    for var in [v for v in os.environ if v.startswith("STT_AGENT_")]:
        monkeypatch.delenv(var)
    for env in container["env"]:  # the pod's overrides take part in the check, as at start
        if env["name"].startswith("STT_AGENT_"):
            monkeypatch.setenv(env["name"], env.get("value", "node-1"))
    config = agent_settings.load(path)  # the agent's own validator: unknown keys, types, ranges
    assert config.mqtt.enabled and config.logging.journald == "off"
    assert config.mqtt.device_id == "node-1"  # from spec.nodeName
    models = mount_for(container, "models")["mountPath"]
    assert config.recognizer.model_dir.startswith(models + "/")
    fetch = next(c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch-model")
    assert fetch["args"][:2] == ["model", "fetch"] and mount_for(fetch, "models")["mountPath"] == "/models"
    assert Path(config.recognizer.model_dir).name == fetch["args"][2]  # the init container fetches that model
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    assert fetch["args"][2] in manifest["models"]
    cache = mount_for(container, "cache")["mountPath"]
    if name == "jetson":
        assert config.recognizer.providers == ["tensorrt", "cuda", "cpu"]
        assert config.recognizer.tensorrt.engine_cache_dir.startswith(cache + "/")
        assert manifest["models"][fetch["args"][2]]["precision"] != "int8"
    else:
        assert config.recognizer.providers == ["cpu"]
        assert config.recognizer.cpu.optimized_cache_dir.startswith(cache + "/")
        inits = ds["spec"]["template"]["spec"]["initContainers"]
        assert [c["name"] for c in inits] == ["fetch-model", "optimize-model"]  # they run in this order
        optimize = inits[1]
        assert "model optimize --config /etc/stt-agent/config.yaml" in optimize["command"][-1]
        assert {m["mountPath"]: m["name"] for m in optimize["volumeMounts"]} == {
            config_mount["mountPath"]: "config", models: "models", cache: "cache", "/tmp": "tmp"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_mqtt_secret_is_mounted_where_password_file_points(rendered, name):
    ds = one(rendered[name], "DaemonSet", "stt-agent")
    container = agent_container(ds)
    cm_name = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")["configMap"]["name"]
    password_file = yaml.safe_load(one(rendered[name], "ConfigMap", cm_name)["data"]["config.yaml"])["mqtt"][
        "password_file"]
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    secret = one(rendered[name], "Secret", volume["secret"]["secretName"])
    mount = mount_for(container, volume["name"])
    assert mount["readOnly"] is True
    assert password_file == f"{mount['mountPath']}/mqtt-password"
    assert base64.b64decode(secret["data"]["mqtt-password"]).decode() == DUMMY_PASSWORD
    assert volume["secret"]["defaultMode"] == 0o440  # group 10001 (fsGroup) reads it, nobody else
    assert ds["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_ask_the_agent_and_caches_survive_restarts(rendered, name):
    ds = one(rendered[name], "DaemonSet", "stt-agent")
    container = agent_container(ds)
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    cm = one(rendered[name], "ConfigMap", volumes["config"]["configMap"]["name"])
    health_file = yaml.safe_load(cm["data"]["config.yaml"])["watchdog"]["health_file"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # the agent's own verdict, from the file this pod's agent writes
        assert container[probe]["exec"]["command"] == ["/opt/stt-agent/venv/bin/stt-agent", "health", "--file",
                                                       health_file]
    run = mount_for(container, "run")
    assert Path(health_file).parent == Path(run["mountPath"]) and not run.get("readOnly")
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (780 if name == "jetson" else 180)  # TimeoutStartSec=180, + 600 s for a TensorRT build
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 30  # WatchdogSec=30
    assert container["resources"]["limits"]["squat.ai/audio"] == 1
    assert volumes["cache"]["hostPath"]["path"] == "/var/cache/stt-agent"
    assert volumes["models"]["hostPath"]["path"] == "/var/lib/stt-agent/models"
    # the MQTT outbox's file, where the image's STATE_DIRECTORY points: on the node, writable
    dockerfile = (Path(__file__).resolve().parents[1] / "docker" / "Dockerfile").read_text(encoding="utf-8")
    state = re.search(r"STATE_DIRECTORY=(\S+)", dockerfile).group(1)
    assert mount_for(container, "state")["mountPath"] == state and not mount_for(container, "state").get("readOnly")
    assert volumes["state"]["hostPath"]["path"] == state


def test_jetson_overlay_uses_the_nvidia_runtime_on_jetsons_only(rendered):
    pod = one(rendered["jetson"], "DaemonSet", "stt-agent")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert 44 in pod["securityContext"]["supplementalGroups"]  # video: nvhost-*, nvmap
    cpu_pod = one(rendered["cpu"], "DaemonSet", "stt-agent")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in cpu_pod and "nodeSelector" not in cpu_pod


def test_the_server_is_probed_over_http_and_finds_its_tokens(rendered, tmp_path, monkeypatch):
    """deploy/kubernetes/server: `serve` answers /healthz and /readyz on the port its config names."""
    objects = rendered["server"]
    deployment = one(objects, "Deployment", "stt-agent-server")
    assert deployment["metadata"]["namespace"] == "stt-agent"
    pod = deployment["spec"]["template"]["spec"]
    container = agent_container(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = one(objects, "ConfigMap", volumes["config"]["configMap"]["name"])
    assert container["args"] == ["serve", "--config", f"{mount_for(container, 'config')['mountPath']}/config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    for var in [v for v in os.environ if v.startswith("STT_AGENT_")]:
        monkeypatch.delenv(var)
    config = agent_settings.load(path)  # the agent's own validator
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert (config.server.enabled, config.server.host, config.server.port) == (True, "0.0.0.0", port)
    assert config.server.metrics.enabled and not config.server.metrics.per_device_labels
    for probe, probe_path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": probe_path, "port": "http"}, probe
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # TimeoutStartSec=180
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 30  # WatchdogSec=30
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == str(port)
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    service = one(objects, "Service", "stt-agent-server")
    assert service["spec"]["selector"].items() <= template["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")]
    secret = one(objects, "Secret", volumes["tokens"]["secret"]["secretName"])
    mount = mount_for(container, "tokens")
    assert mount["readOnly"] is True and config.server.tokens_file == f"{mount['mountPath']}/tokens"
    assert base64.b64decode(secret["data"]["tokens"]).decode() == DUMMY_TOKENS
    assert volumes["tokens"]["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001 and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and not pod.get("hostNetwork")
    # the model fetched, then its optimized copy made where the server's config looks for it
    inits = pod["initContainers"]
    assert [c["name"] for c in inits] == ["fetch-model", "optimize-model"]  # they run in this order
    optimize, cache = inits[1], mount_for(container, "cache")["mountPath"]
    assert f"model optimize --config {mount_for(container, 'config')['mountPath']}/config.yaml" in optimize["command"][-1]
    assert config.recognizer.providers == ["cpu"] and config.recognizer.cpu.optimized_cache_dir.startswith(cache + "/")
    assert {m["mountPath"]: m["name"] for m in optimize["volumeMounts"]} == {
        mount_for(container, "config")["mountPath"]: "config", mount_for(container, "models")["mountPath"]: "models",
        cache: "cache", "/tmp": "tmp"}
    # the read-only root leaves the image's STATE_DIRECTORY to a volume: the MQTT outbox outlives a container restart
    dockerfile = (Path(__file__).resolve().parents[1] / "docker" / "Dockerfile").read_text(encoding="utf-8")
    state = re.search(r"STATE_DIRECTORY=(\S+)", dockerfile).group(1)
    assert mount_for(container, "state")["mountPath"] == state and "emptyDir" in volumes["state"]
    for each in pod["containers"] + pod["initContainers"]:
        csc = each["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"]} and not csc.get("privileged")
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-model")
    assert Path(config.recognizer.model_dir).name == fetch["args"][2]
    assert config.recognizer.model_dir.startswith(mount_for(container, "models")["mountPath"] + "/")


def test_a_config_change_renames_the_config_map(tree, tmp_path):
    """The hash suffix is what rolls the DaemonSet out when config.yaml changes."""
    changed = tmp_path / "kubernetes"
    shutil.copytree(tree, changed)
    config = changed / "overlays" / "jetson" / "config.yaml"
    config.write_text(config.read_text().replace("device: default", "device: USB"))
    before = one(render(tree / "overlays" / "jetson"), "DaemonSet", "stt-agent")
    after = one(render(changed / "overlays" / "jetson"), "DaemonSet", "stt-agent")
    names = [next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")["configMap"]["name"]
             for ds in (before, after)]
    assert names[0] != names[1] and all(n.startswith("stt-agent-config-") for n in names)


@pytest.mark.parametrize("secret", ["base/mqtt-password", "server/tokens"])
def test_the_secret_files_are_never_committed(secret):
    directory, name = secret.split("/")
    assert f"/{name}" in (DEPLOY / directory / ".gitignore").read_text().splitlines()
    if shutil.which("git") and (ROOT / ".git").exists():  # and git agrees (a copy without git: the line above)
        ignored = subprocess.run(["git", "check-ignore", "-q", f"deploy/kubernetes/{secret}"], cwd=ROOT)
        assert ignored.returncode == 0, f"deploy/kubernetes/{secret} must be git-ignored"


def _kustomize_command() -> list[str] | None:
    for candidate in (Path(sys.prefix) / "bin" / "kubectl", shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return [str(candidate), "kustomize"]
    found = shutil.which("kustomize")
    return [found, "build"] if found else None


@pytest.mark.parametrize("name", OVERLAYS + OTHERS)
def test_renderer_agrees_with_real_kustomize(tree, rendered, name):
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kubectl or kustomize binary here; the overlays were still rendered by this file's "
                    "implementation of kustomize's rules and validated")
    directory = tree / "overlays" / name if name in OVERLAYS else tree / name
    proc = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "unknown command" in proc.stderr:
        pytest.skip(f"{command[0]} has no kustomize: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(proc.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in rendered[name]}
    assert sorted(theirs) == sorted(ours)
    for key, obj in ours.items():
        assert obj == theirs[key], key


def test_the_server_scales_on_the_decoder_load_and_a_full_pod_takes_no_new_devices(rendered, tmp_path, monkeypatch):
    """deploy/kubernetes/server: readiness is admission, the HPA reads the metric the server exports (through
    prometheus-adapter's rule, or KEDA's query), and sessions end so that devices spread over new pods."""
    objects = rendered["server"]
    deployment = one(objects, "Deployment", "stt-agent-server")
    container = agent_container(deployment)
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"  # 503 at max_streams or over admission_load
    assert readiness["failureThreshold"] == 1 and readiness["periodSeconds"] <= 5
    assert "replicas" not in deployment["spec"]  # the HPA's to set: an apply would reset it
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    path = tmp_path / "config.yaml"
    path.write_text(one(objects, "ConfigMap", volumes["config"]["configMap"]["name"])["data"]["config.yaml"])
    for var in [v for v in os.environ if v.startswith("STT_AGENT_")]:
        monkeypatch.delenv(var)
    server = agent_settings.load(path).server
    assert server.max_session_s > 0  # streams end and reconnect, so a scale-out gets its share

    hpa = one(objects, "HorizontalPodAutoscaler", "stt-agent-server")
    assert hpa["metadata"]["namespace"] == "stt-agent"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    target = float(metric["pods"]["target"]["averageValue"].rstrip("m")) / 1000
    assert 0 < target < server.admission_load  # a pod is added before admission refuses streams

    # The metric: the gauge agent/server/metrics.py exports, with its kind="finals" series.
    source = (ROOT / "agent" / "server" / "metrics.py").read_text(encoding="utf-8")
    assert 'GaugeMetricFamily("stt_decoder_load"' in source and 'labels=("kind",)' in source
    values = yaml.safe_load((DEPLOY / "server" / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith("stt_decoder_load{") and 'kind="finals"' in rule["seriesQuery"]
    assert 'kind="finals"' in rule["metricsQuery"] and set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    keda = yaml.safe_load((DEPLOY / "server" / "autoscaling" / "keda-scaledobject.yaml").read_text())
    assert (keda["apiVersion"], keda["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert keda["metadata"]["namespace"] == hpa["metadata"]["namespace"]
    assert keda["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (keda["spec"]["minReplicaCount"], keda["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) == target
    query = trigger["metadata"]["query"]
    assert query.startswith("sum(stt_decoder_load{") and 'kind="finals"' in query  # sum / threshold = replicas
    assert f'namespace="{hpa["metadata"]["namespace"]}"' in query
    # One autoscaler per Deployment: the ScaledObject is applied instead of hpa.yaml, never rendered with it.
    kustomization = yaml.safe_load((DEPLOY / "server" / "kustomization.yaml").read_text())
    assert not any(entry.startswith("autoscaling") for entry in kustomization["resources"])
