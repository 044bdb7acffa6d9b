"""Offline checks of the scale-out deploy files: compose's NATS cluster and relays, k8s.

Like tests/test_deploy.py, no engine or cluster: the NATS configurations are
checked by the real ``nats-server -t`` (from the pinned wheel), the compose
file by ``docker-compose config``, the manifests by ``kubernetes-validate``
and, where ``kubectl`` is installed, rendered with ``kubectl kustomize``; the
settings the files pass are loaded by the real :class:`~realtime.config.Settings`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from realtime.config import Settings
from tests.scaleout import nats_executable
from tests.test_deploy import COMPOSE, COMPOSE_ENV, DEPLOY, run, tool

pytestmark = pytest.mark.driver_blind

OVERLAY = DEPLOY / "k8s-scaleout"
NATS_SERVICES = ("nats1", "nats2", "nats3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def nats_config_is_valid(path: Path, env: dict[str, str]) -> None:
    result = run(nats_executable(), "-t", "-c", str(path), env=env)
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_compose_nats_config_is_valid() -> None:
    for name in NATS_SERVICES:
        nats_config_is_valid(DEPLOY / "nats.conf", {"NATS_NAME": name})
    text = (DEPLOY / "nats.conf").read_text()
    for name in NATS_SERVICES:
        assert f"nats://{name}:6222" in text
    assert "jetstream" in text


def test_compose_runs_a_three_node_jetstream_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in NATS_SERVICES:
        nats = services[name]
        assert nats["image"].startswith("nats:2.")
        assert nats["command"] == ["--config", "/etc/nats/nats.conf"]
        assert nats["environment"]["NATS_NAME"] == name
        assert "./deploy/nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
        assert f"{name}-data:/data" in nats["volumes"]
        assert "js-enabled-only" in " ".join(nats["healthcheck"]["test"])
        assert "ports" not in nats


def test_compose_runs_two_relays_and_edges_on_the_cluster(compose: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    relay, app = services["relay"], services["app"]
    assert relay["deploy"]["replicas"] == 2
    assert relay["entrypoint"] == ["realtime", "relay"]
    assert relay["build"] == app["build"]
    assert relay["image"] == app["image"]
    for service in (relay, app):
        for name in NATS_SERVICES:
            assert service["depends_on"][name]["condition"] == "service_healthy"
        urls = service["environment"]["REALTIME_BROKER_URL"].split(",")
        assert urls == [f"nats://{name}:4222" for name in NATS_SERVICES]
        assert service["environment"]["REALTIME_BROKER_REPLICAS"] == "3"
    assert "9100" in " ".join(relay["healthcheck"]["test"])
    assert "ports" not in relay
    # What compose passes, the relay's settings accept (the password interpolated).
    for name in [k for k in os.environ if k.startswith("REALTIME_")]:
        monkeypatch.delenv(name)
    for name, value in relay["environment"].items():
        monkeypatch.setenv(name, value.replace("${REALTIME_DB_PASSWORD:?set REALTIME_DB_PASSWORD "
                                               "in .env}", "secret"))
    settings = Settings()
    assert settings.broker_replicas == 3
    assert settings.broker_url is not None


def test_compose_with_the_scale_out_validates(tmp_path: Path) -> None:
    exe = tool("docker-compose")
    result = run(exe, "-f", str(COMPOSE), "config", env=COMPOSE_ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert {"nats1", "nats2", "nats3", "relay", "app", "nginx"} <= set(rendered["services"])
    assert {"nats1-data", "nats2-data", "nats3-data"} <= set(rendered["volumes"])


def overlay_docs() -> list[dict[str, Any]]:
    docs = []
    for name in ("nats.yaml", "relay.yaml"):
        docs.extend(yaml.safe_load_all((OVERLAY / name).read_text()))
    return docs


def test_the_k8s_overlay_validates() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        tool("kubernetes-validate")
        raise
    for doc in overlay_docs():
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_the_k8s_relay_is_a_deployment_of_two_that_the_edges_service_never_selects() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in overlay_docs()}
    relay = docs[("Deployment", "realtime-relay")]
    assert relay["spec"]["replicas"] == 2
    pod = relay["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["realtime", "relay"]
    assert "--metrics-port" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["REALTIME_BROKER_URL"]["value"] == "nats://realtime-nats:4222"
    assert env["REALTIME_MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"] == "realtime"
    labels = relay["spec"]["template"]["metadata"]["labels"]
    base_service = yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())
    assert not base_service["spec"]["selector"].items() <= labels.items()


def test_the_k8s_nats_cluster_has_three_nodes_with_a_valid_config(tmp_path: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in overlay_docs()}
    nats = docs[("StatefulSet", "realtime-nats")]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "realtime-nats-cluster"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config = docs[("ConfigMap", "realtime-nats")]["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://realtime-nats-{i}.realtime-nats-cluster:6222" in config
    path = tmp_path / "nats.conf"
    path.write_text(config)
    nats_config_is_valid(path, {"POD_NAME": "realtime-nats-0"})


def test_the_k8s_overlay_turns_the_base_into_edges() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../k8s", "nats.yaml", "relay.yaml"]
    patch = yaml.safe_load((OVERLAY / "edges.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in container["env"]} == {"REALTIME_BROKER_URL",
                                                     "REALTIME_BROKER_REPLICAS"}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    result = run(kubectl, "kustomize", str(OVERLAY))
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    edges = next(d for d in rendered
                 if d["kind"] == "Deployment" and d["metadata"]["name"] == "realtime")
    env = {e["name"] for e in edges["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"REALTIME_BROKER_URL", "REALTIME_MONGODB_URI", "REALTIME_API_KEYS"} <= env
    import kubernetes_validate

    for doc in rendered:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
