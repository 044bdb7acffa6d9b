"""Offline checks of every deploy file: compose, Dockerfile, nginx, Kubernetes, Grafana.

No Docker engine or cluster is needed. Tools: Debian's ``docker-compose`` (parses,
interpolates and schema-validates the compose file without a daemon) and ``nginx``
(``nginx -t``, and a real proxy in front of two servers), both installed by
``.ci/run``; ``hadolint`` and ``kubernetes-validate`` from the dev extras. A test
whose tool is missing skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from realtime.config import Settings
from realtime.embedded import free_port
from tests.helpers import LiveServer, live_server, until, wait_until, ws_client

pytestmark = pytest.mark.driver_blind

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.replicaset.yml"
K8S = DEPLOY / "k8s"
COMPOSE_ENV = {"MONGO_ROOT_PASSWORD": "root-secret", "REALTIME_DB_PASSWORD": "app-secret",
               "REALTIME_API_KEYS": '[{"sha256": "' + "0" * 64 + '", "scopes": ["read:*"]}]'}
MONGO_SERVICES = ("mongo1", "mongo2", "mongo3")


def tool(name: str) -> str:
    """The path of ``name``: in the venv, else on PATH; skip (fail under CI) if absent."""
    venv = Path(sys.executable).parent / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed (.ci/run and the dev extras install it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})}, check=False)


# ------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_validates_with_docker_compose(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker-compose config`` parses, interpolates and schema-checks the file."""
    exe = tool("docker-compose")
    result = run(exe, "-f", str(COMPOSE), "config", env=COMPOSE_ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    uri = rendered["services"]["app"]["environment"]["REALTIME_MONGODB_URI"]
    assert uri == ("mongodb://realtime:app-secret@mongo1:27017,mongo2:27017,mongo3:27017/"
                   "realtime?replicaSet=rs0&authSource=admin")
    # Passwords are required, not defaulted.
    for name in COMPOSE_ENV:
        missing = run(exe, "-f", str(COMPOSE), "config", cwd=tmp_path,
                      env={**COMPOSE_ENV, name: ""})
        assert missing.returncode != 0
        assert name in missing.stderr
    # The app's settings accept what compose passes (API keys, origins, driver, ...).
    for name in [k for k in os.environ if k.startswith("REALTIME_")]:
        monkeypatch.delenv(name)
    for name, value in rendered["services"]["app"]["environment"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.auth == "apikey"
    assert settings.allowed_origins == ["http://localhost:8080"]
    # The validator is real: an unknown service key is rejected.
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE.read_text().replace("    hostname: mongo2\n",
                                                  "    hostname: mongo2\n    hostnme: x\n"))
    result = run(exe, "-f", str(broken), "config", env=COMPOSE_ENV, cwd=tmp_path)
    assert result.returncode != 0
    assert "hostnme" in result.stderr


def test_compose_replica_set(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in MONGO_SERVICES:
        mongo = services[name]
        image, _, tag = mongo["image"].partition(":")
        assert image == "mongo"
        assert int(tag.split(".")[0]) >= 7, "pinned major >= 7"
        command = mongo["command"]
        assert command[:3] == ["mongod", "--replSet", "rs0"]
        assert "--keyFile" in command
        assert "mongo-keyfile:/etc/mongo-keyfile:ro" in mongo["volumes"]
        assert any(v.endswith(":/data/db") for v in mongo["volumes"])
        assert "ping" in " ".join(mongo["healthcheck"]["test"])
        assert "ports" not in mongo, "MongoDB stays inside the compose network"
    assert "MONGO_INITDB_ROOT_PASSWORD" in services["mongo1"]["environment"]
    keyfile = services["mongo-keyfile"]
    assert "chmod 400" in keyfile["command"][0]
    assert "if [ ! -s /keyfile/keyfile ]" in keyfile["command"][0], "created once"
    init = services["rs-init"]
    assert all(init["depends_on"][m]["condition"] == "service_healthy" for m in MONGO_SERVICES)
    script = init["command"][0]
    assert "NotYetInitialized" in script, "initiates only when not initiated"
    assert "PRIMARY" in script, "waits for a primary"
    assert init["restart"] == "no"
    # Every volume used is a declared named volume.
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", ())
            if not v.startswith(".")}
    assert used == declared


def test_compose_rs_init_script_parses(compose: dict[str, Any], tmp_path: Path) -> None:
    """The mongosh script is valid JavaScript (node parses it; mongosh is node)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "rs-init.js"
    script.write_text(compose["services"]["rs-init"]["command"][0])
    result = run(node, "--check", str(script))
    assert result.returncode == 0, result.stderr


def test_compose_app_and_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app = services["app"]
    assert app["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert app["deploy"]["replicas"] == 2
    for name in MONGO_SERVICES:
        assert app["depends_on"][name]["condition"] == "service_healthy"
    assert app["depends_on"]["rs-init"]["condition"] == "service_completed_successfully"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    env = app["environment"]
    assert "replicaSet=rs0" in env["REALTIME_MONGODB_URI"]
    assert env["REALTIME_HOST"] == "0.0.0.0"
    assert env["REALTIME_LOG_FORMAT"] == "json"
    assert "apikey" in env["REALTIME_AUTH"], "non-loopback: authentication, not --insecure"
    assert "--insecure" not in json.dumps(compose)
    assert "ports" not in app
    nginx = services["nginx"]
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]
    # Only nginx publishes a port.
    assert [n for n, s in services.items() if "ports" in s] == ["nginx"]
    # Every long-running service has a healthcheck; one-shot jobs do not restart.
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service, name


# ---------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[str]]:
    """Instructions of each stage (continuation lines joined, comments dropped)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_lints_clean() -> None:
    exe = tool("hadolint")
    result = run(exe, "--failure-threshold", "info", str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    text = "\n".join(final)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    header = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", header, re.M)
    user = [i for i in final if i.startswith("USER ")]
    assert user, "non-root user"
    assert user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert "COPY --from=build /opt/realtime /opt/realtime" in final
    for tool_name in ("gcc", "build-essential", "apt-get", "pip install"):
        assert tool_name not in text, f"{tool_name} in the final stage"
    healthcheck = next(i for i in final if i.startswith("HEALTHCHECK"))
    assert "/healthz" in healthcheck
    entry = next(i for i in final if i.startswith("ENTRYPOINT"))
    assert json.loads(entry.removeprefix("ENTRYPOINT ")) == ["realtime", "serve"], "exec form"
    assert "REALTIME_HOST=0.0.0.0" in text
    # The build stage installs the package without the GPL embedded server.
    build = "\n".join(stages[0])
    assert "[embedded]" not in build
    assert "secantus" not in build.lower()
    # What the build copies exists, and the ignore file lets it through.
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", "\n".join(stages[0]), re.M)
    sources = [s for line in copied for s in line.split()]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for source in sources:
        assert (ROOT / source).exists(), source
        top = source.split("/")[0]
        assert f"!{top}" in ignore or f"!{top}/" in ignore, source


# --------------------------------------------------------------------------- nginx


def nginx_config(tmp_path: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with the compose host names swapped for loopback ports."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;\n"
                      for p in upstreams)
    text, n = re.subn(r"        server app:8000[^\n]*\n", servers, text)
    assert n == 2  # the least_conn upstream, and the one by tenant (WebSockets with a hint)
    text, n = re.subn(r"listen 8080;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1
    text = text.replace("/tmp/", f"{tmp_path}/")  # noqa: S108 - rewriting the conf's paths
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    exe = tool("nginx")
    conf = nginx_config(tmp_path, free_port(), [free_port()])
    result = run(exe, "-t", "-c", str(conf), "-p", str(tmp_path), "-e", "stderr")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture
def nginx_exe() -> str:
    return tool("nginx")


@pytest.fixture
async def two_replicas(settings: Settings) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    """Two in-process servers on one database (stand-ins for the compose replicas)."""
    async with live_server(settings) as a, \
            live_server(settings.model_copy(update={"port": 0})) as b:
        yield a, b


@pytest.fixture
def nginx(nginx_exe: str, tmp_path: Path,
          two_replicas: tuple[LiveServer, LiveServer]) -> Iterator[str]:
    """nginx running deploy/nginx.conf in front of the two servers; yields its URL."""
    port = free_port()
    conf = nginx_config(tmp_path, port, [s.port for s in two_replicas])
    conf.write_text(conf.read_text().replace("worker_processes auto;",
                                             "worker_processes 1;\ndaemon off;"))
    proc = subprocess.Popen([nginx_exe, "-c", str(conf), "-p", str(tmp_path), "-e", "stderr"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_nginx_proxies_rest_and_websocket(
        nginx: str, two_replicas: tuple[LiveServer, LiveServer]) -> None:
    """Through deploy/nginx.conf: REST, request ids, WebSocket upgrade, both replicas."""
    async with httpx.AsyncClient(base_url=nginx, timeout=10) as http:
        async def up() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False
        await wait_until(up, 10, "nginx up")

        ws_url = nginx.replace("http://", "ws://") + "/ws"
        async with ws_client(ws_url) as first, ws_client(ws_url) as second:
            await first.subscribe("s", "orders")
            await second.subscribe("s", "orders")
            # least_conn spreads the two long-lived connections over both replicas.
            counts = [len(s.app.state.services.hub.connections) for s in two_replicas]
            assert counts == [1, 1]
            r = await http.post("/api/collections/orders/documents", json={"n": 1},
                                headers={"X-Request-ID": "through-nginx"})
            assert r.status_code == 201, r.text
            assert r.headers["x-request-id"] == "through-nginx"
            key = r.json()["_id"]
            for client in (first, second):
                change = await client.expect("change")
                assert change["key"] == key

        # Without a client id, nginx's $request_id (32 hex) is passed and returned.
        r = await http.get("/healthz")
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        # /metrics is not exposed through the proxy.
        assert (await http.get("/metrics")).status_code == 404


async def test_nginx_routes_the_clients_of_a_tenant_to_one_edge(
        nginx: str, two_replicas: tuple[LiveServer, LiveServer]) -> None:
    """deploy/nginx.conf for real: ``/ws?tenant=...`` by a consistent hash, others least_conn."""
    async with httpx.AsyncClient(base_url=nginx, timeout=10) as http:
        async def up() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False
        await wait_until(up, 10, "nginx up")
    ws_url = nginx.replace("http://", "ws://") + "/ws"

    def counts() -> list[int]:
        return [len(s.app.state.services.hub.connections) for s in two_replicas]

    for tenant in ("acme", "globex", "initech"):
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                client = await stack.enter_async_context(ws_client(f"{ws_url}?tenant={tenant}"))
                await client.subscribe("s", "orders")
            assert sorted(counts()) == [0, 4], tenant  # all four on one replica
        await wait_until(lambda: _no_connections(two_replicas), 10, "connections closed")


async def _no_connections(replicas: tuple[LiveServer, LiveServer]) -> bool:
    return all(not s.app.state.services.hub.connections for s in replicas)


# ---------------------------------------------------------------------- Kubernetes


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests_validate() -> None:
    """Every manifest against the Kubernetes OpenAPI schemas, strictly."""
    try:
        import kubernetes_validate
    except ImportError:
        tool("kubernetes-validate")  # skips, or fails under CI
        raise
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    # The validator is real: an unknown field fails strict validation.
    deployment = load_all()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)


def test_k8s_deployment() -> None:
    docs = load_all()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service",
                         "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert container["lifecycle"]["preStop"]
    assert 10 <= pod["terminationGracePeriodSeconds"] <= 120
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not container["image"].endswith(":latest")
    env = {e["name"]: e for e in container["env"]}
    uri = env["REALTIME_MONGODB_URI"]["valueFrom"]["secretKeyRef"]
    assert uri == {"name": docs["Secret"]["metadata"]["name"], "key": "REALTIME_MONGODB_URI"}
    assert "REALTIME_MONGODB_URI" not in docs["ConfigMap"]["data"]
    assert container["envFrom"] == [{"configMapRef": {"name": docs["ConfigMap"]["metadata"]
                                                      ["name"]}}]
    assert docs["ConfigMap"]["data"]["REALTIME_AUTH"] != "none"
    # Selectors agree: Service, PDB and HPA all reach the Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    port = docs["Service"]["spec"]["ports"][0]["targetPort"]
    assert port in [p["name"] for p in container["ports"]]


def test_k8s_kustomization_lists_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifests()} - {"secret.example.yaml"}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    result = run(kubectl, "kustomize", str(K8S))
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout)}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"}


# ------------------------------------------------------------------------- Grafana


async def test_grafana_dashboard_uses_real_metrics(client: httpx.AsyncClient, app: Any) -> None:
    """Every metric the dashboard queries is one /metrics serves."""
    r = await client.post("/api/collections/orders/documents", json={"n": 1})
    assert r.status_code == 201
    await until(lambda: app.state.services.feed.lag is not None, 10, "an event")
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\b((?:realtime|process)_[a-z_]+)", e)}
    text = (await client.get("/metrics")).text
    served = set()
    for family in text_string_to_metric_families(text):
        served |= {s.name for s in family.samples}
    assert used - served == set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
