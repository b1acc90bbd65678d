"""deploy/docker-compose.yml and deploy/k8s/: yamllint, then the essentials that keep them in
step with the code: probes on routes that exist, ports that match, env names that are config
fields, resources that match the thread setting, non-root, drain time covered."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from app.config import Config, env_names
from app.routes import add_routes
from tests.deploy.test_dockerfile import DEPLOY, ROOT, parse_dockerfile

K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
YAML_FILES = sorted([*K8S.glob("*.yaml"), COMPOSE])
CONFIG_ENV = env_names()
# Not ours, and deliberate: the tokenizer's Rust thread pool, sized like ONNX Runtime's;
# the OpenTelemetry SDK's resource attributes (the pod's name and namespace on each span).
OTHER_ENV = {"RAYON_NUM_THREADS", "POD_NAME", "POD_NAMESPACE", "OTEL_RESOURCE_ATTRIBUTES"}


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, for every resource under deploy/k8s/."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load(COMPOSE)
    return doc


def get_routes() -> set[str]:
    app = web.Application()
    add_routes(app)
    return {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET" and r.resource is not None
    }


def pod_containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return manifest["spec"]["template"]["spec"]["containers"]


def config_map(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    (cm,) = [v for (kind, _), v in k8s.items() if kind == "ConfigMap"]
    return cm["data"]


def test_yaml_parses_and_passes_yamllint() -> None:
    linter = pytest.importorskip("yamllint.linter", reason="pip install yamllint (dev extra)")
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    assert len(YAML_FILES) >= 8
    problems = []
    for path in YAML_FILES:
        load(path)
        problems += [f"{path.name}:{p.line}: {p.desc}" for p in linter.run(path.read_text(), conf)]
    assert not problems, "\n".join(problems)


def test_kustomization_lists_existing_files(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    (kust,) = load(K8S / "kustomization.yaml")
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    kinds = {kind for kind, _ in k8s}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "Job",
    } <= kinds
    # The image tag lives in one place for the Deployment; the Job names the same one.
    (image,) = kust["images"]
    job = next(v for (kind, _), v in k8s.items() if kind == "Job")
    assert pod_containers(job)[0]["image"] == f"{image['name']}:{image['newTag']}"
    # The Deployment names it too (a fixed tag even before kustomize sets it: checkov CKV_K8S_14).
    deployment = pod_containers(k8s["Deployment", "rerank"])[0]["image"]
    assert deployment == f"{image['name']}:{image['newTag']}"


def test_probes_point_at_routes_that_exist(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    routes = get_routes()
    (container,) = pod_containers(k8s["Deployment", "rerank"])
    paths = {
        p: container[p]["httpGet"]["path"]
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert set(paths.values()) <= routes, routes
    assert paths["readinessProbe"] == "/readyz"
    # Liveness and startup must not depend on Elasticsearch: an outage would restart pods.
    assert paths["livenessProbe"] == paths["startupProbe"] == "/healthz"


def test_ports_match_everywhere(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    image = parse_dockerfile().final
    image_port = int(image.env()["RERANK_PORT"])
    app_port = int(config_map(k8s).get("RERANK_PORT", image_port))
    assert app_port == image_port == Config().http.port
    (container,) = pod_containers(k8s["Deployment", "rerank"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin_port = int(config_map(k8s)["RERANK_ADMIN_PORT"])
    assert admin_port == int(image.env()["RERANK_ADMIN_PORT"])
    assert ports == {"http": app_port, "admin": admin_port}
    # Probes go to the admin listener: they answer while the data port is saturated.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("admin", admin_port)
    (svc_port,) = k8s["Service", "rerank"]["spec"]["ports"]
    assert svc_port["targetPort"] in (ports.keys() | ports.values())
    # The NetworkPolicy lets both in: clients on http, probes and scrapers on admin (issue
    # 27: Prometheus scrapes /metrics there, with a key when metrics auth is on).
    (rule,) = k8s["NetworkPolicy", "rerank"]["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == {"http", "admin"}


def test_selectors_and_targets_line_up(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deploy = k8s["Deployment", "rerank"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["Service", "rerank"]["spec"]["selector"].items() <= labels.items()
    pdb = k8s["PodDisruptionBudget", "rerank"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s["HorizontalPodAutoscaler", "rerank"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rerank",
    }
    # With one pod allowed down at a time, keep at least two.
    assert hpa["minReplicas"] >= 2 and pdb.get("maxUnavailable", 0) <= hpa["minReplicas"] - 1
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    strategy = deploy["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def _env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_env_names_are_config_fields(
    k8s: dict[tuple[str, str], dict[str, Any]], compose: dict[str, Any]
) -> None:
    assert set(config_map(k8s)) <= CONFIG_ENV, set(config_map(k8s)) - CONFIG_ENV
    secrets = {
        name: set(v.get("stringData", v.get("data", {})))
        for (kind, name), v in k8s.items()
        if kind == "Secret"
    }
    config_maps = {name for kind, name in k8s if kind == "ConfigMap"}
    for (kind, name), manifest in k8s.items():
        if kind not in ("Deployment", "Job"):
            continue
        for c in pod_containers(manifest):
            names = _env_names(c)
            assert names <= CONFIG_ENV | OTHER_ENV, f"{name}: {names - CONFIG_ENV - OTHER_ENV}"
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in config_maps
            for e in c.get("env", []):
                if key_ref := e.get("valueFrom", {}).get("secretKeyRef"):
                    assert key_ref["key"] in secrets[key_ref["name"]], key_ref
    for service in ("rerank", "index"):
        env = set(compose["services"][service].get("environment", {}))
        assert env <= CONFIG_ENV | OTHER_ENV, f"compose {service}: {env - CONFIG_ENV}"
    assert "RERANK_ES_API_KEY" in _env_names(pod_containers(k8s["Deployment", "rerank"])[0])


def _cpus(quantity: str | int) -> float:
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def test_resources_are_guaranteed_and_threads_follow_the_cpu_limit(
    k8s: dict[tuple[str, str], dict[str, Any]], compose: dict[str, Any]
) -> None:
    for (kind, name), manifest in k8s.items():
        if kind not in ("Deployment", "Job"):
            continue
        for c in pod_containers(manifest):
            res = c["resources"]
            assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}, name
            assert res["requests"] == res["limits"], f"{name}: requests == limits (Guaranteed)"
            cpus = _cpus(res["limits"]["cpu"])
            assert cpus == int(cpus) >= 1, f"{name}: whole CPUs, so threads == CPUs exactly"
    (c,) = pod_containers(k8s["Deployment", "rerank"])
    threads = next(e for e in c["env"] if e["name"] == "RERANK_THREADS")
    if "value" in threads:
        assert _cpus(threads["value"]) == _cpus(c["resources"]["limits"]["cpu"])
    else:
        ref = threads["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and ref.get("containerName", c["name"]) == c["name"]
        assert str(ref.get("divisor", "1")) == "1"
    rerank = compose["services"]["rerank"]
    assert int(rerank["environment"]["RERANK_THREADS"]) == _cpus(rerank["cpus"])


def test_runs_as_non_root(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    user = parse_dockerfile().final.last("USER")
    assert user is not None
    uid = int(user.args.split(":")[0])
    for (kind, name), manifest in k8s.items():
        if kind not in ("Deployment", "Job"):
            continue
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", uid) == uid, name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name


def test_termination_grace_covers_the_drain(
    k8s: dict[tuple[str, str], dict[str, Any]], compose: dict[str, Any]
) -> None:
    cm = config_map(k8s)
    drain = float(cm["RERANK_SHUTDOWN_GRACE_S"]) + float(cm["RERANK_DRAIN_TIMEOUT_S"])
    pod = k8s["Deployment", "rerank"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= drain + 5
    rerank = compose["services"]["rerank"]
    env = rerank["environment"]
    grace = float(env["RERANK_SHUTDOWN_GRACE_S"]) + float(env["RERANK_DRAIN_TIMEOUT_S"])
    m = re.fullmatch(r"(\d+)s", rerank["stop_grace_period"])
    assert m and int(m.group(1)) >= grace + 5


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_elasticsearch_server_matches_the_pinned_client(compose: dict[str, Any]) -> None:
    import tomllib

    from packaging.requirements import Requirement

    es = compose["services"]["elasticsearch"]
    image, _, tag = es["image"].rpartition(":")
    assert image.endswith("elasticsearch/elasticsearch") and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    server = _version(tag)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (client_req,) = [Requirement(d) for d in deps if Requirement(d).name == "elasticsearch"]
    assert client_req.specifier.contains(f"{server[0]}.0.0"), client_req
    assert not client_req.specifier.contains(f"{server[0] + 1}.0.0"), "pin the client's major"
    pinned = next(
        line.split("==")[1]
        for line in (DEPLOY / "requirements.txt").read_text().splitlines()
        if line.startswith("elasticsearch==")
    )
    client = _version(pinned)
    # Same major (compatibility headers), and clients are forward compatible only: the
    # server's minor must be at least the client's.
    assert client[0] == server[0] and server[:2] >= client[:2], (pinned, tag)
    env = es["environment"]
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] in ("true", "false"), "security: say it explicitly"
    heap = re.findall(r"-Xm([sx])(\d+)([mg])", env["ES_JAVA_OPTS"])
    assert {s for s, _, _ in heap} == {"s", "x"} and len({(n, u) for _, n, u in heap}) == 1
    assert "healthcheck" in es and "mem_limit" in es


def test_compose_wires_index_job_and_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    image = parse_dockerfile().final
    for name in ("index", "rerank"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    index = services["index"]
    assert index["entrypoint"] == ["python", "-m", "app", "index"]
    dataset = index["command"][index["command"].index("--dataset") + 1]
    copied = [i.flags_and_rest()[1].split()[-1] for i in image.all("COPY") if "corpus" in i.args]
    assert any(dataset.startswith(c) for c in copied), f"{dataset} is not in the image"
    assert index["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert index.get("restart") == "no"
    rerank = services["rerank"]
    assert "entrypoint" not in rerank and "command" not in rerank, "the image's entrypoint"
    assert rerank["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert rerank["depends_on"]["index"]["condition"] == "service_completed_successfully"
    for svc in (index, rerank):
        url = svc["environment"]["RERANK_ES_URL"]
        assert url == "http://elasticsearch:9200", url
    test = rerank["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and test[-1] in get_routes()
    assert test[2] in image.copies_from_context()


ALB_IDLE_TIMEOUT_S = 60.0  # the most common balancer's default (deploy/README.md)


def test_keepalive_outlives_the_load_balancers_idle_timeout(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """The balancer must close idle connections first, or it can reuse one the pod is
    closing and answer 502; the manifest and the service's own default both hold that."""
    from app.config import HttpConfig

    assert float(config_map(k8s)["RERANK_KEEPALIVE_TIMEOUT_S"]) > ALB_IDLE_TIMEOUT_S
    assert HttpConfig().keepalive_timeout_s > ALB_IDLE_TIMEOUT_S
