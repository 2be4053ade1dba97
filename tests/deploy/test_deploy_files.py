"""deploy/: the Dockerfile passes hadolint, the Kubernetes manifests validate against the Kubernetes schemas
(offline), and the pieces agree with each other and with the server (flags parse, probes exist, the grace period
covers the drain, the proxy config is valid nginx)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamgen.cli import build_parser
from streamgen.commands.serve import build_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' brings it)")
    return path


def _documents() -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _serve_config(argv: list[str]):
    return build_config(build_parser().parse_args(["serve", *argv]))


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), "--format", "json", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)


def test_the_manifests_validate_against_the_kubernetes_schemas():
    result = subprocess.run([_tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(MANIFESTS) >= 2


def test_the_dockerfile_runs_a_command_the_server_accepts():
    text = (DEPLOY / "Dockerfile").read_text()
    entry = json.loads(next(line for line in text.splitlines() if line.startswith("ENTRYPOINT")).split(None, 1)[1])
    cmd = json.loads(next(line for line in text.splitlines() if line.startswith("CMD")).split(None, 1)[1])
    assert entry[:2] == ["streamgen", "serve"]
    config = _serve_config(entry[2:] + cmd)
    assert config.host == "0.0.0.0" and config.port == 8000
    assert "/livez" in text and "USER 10001" in text and 'VOLUME ["/models"]' in text


def test_the_statefulset_drains_within_its_grace_period_and_probes_what_the_server_serves():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    pod = docs[("StatefulSet", "streamgen")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = [a.replace("$(POD_NAME)", "streamgen-0") for a in container["args"]]
    config = _serve_config(args)
    assert config.public_url == "https://studio.example.org/streamgen-0", "each pod's public path is its name, which the proxy routes by"
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pause + config.drain_seconds + 5
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez" and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    replicas = docs[("StatefulSet", "streamgen")]["spec"]["replicas"]
    proxy = docs[("ConfigMap", "streamgen-proxy")]["data"]["nginx.conf"]
    assert sum(f"streamgen-{i}.streamgen." in proxy for i in range(replicas)) == replicas, "the proxy's pool names every pod"


def test_the_proxy_config_in_the_configmap_is_valid_nginx(tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs it with apt-get when run as root)")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    text = docs[("ConfigMap", "streamgen-proxy")]["data"]["nginx.conf"]
    # no cluster DNS here: the pod names resolve to loopback for the syntax check
    for i in range(4):
        text = text.replace(f"streamgen-{i}.streamgen.default.svc.cluster.local", "127.0.0.1")
    text = text.replace("kube-dns.kube-system.svc.cluster.local", "127.0.0.1").replace("/tmp/", f"{tmp_path}/")
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    result = subprocess.run([nginx, "-t", "-c", str(config), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
