"""The real image, built by ``make image`` (buildah, no Docker engine), run and checked from
outside by ``make image-test`` (RERANK_IMAGE names the image; without it these skip). How it
is run: tests/deploy/container.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import orjson
import pytest

from app.config import ENV_PREFIX, env_names
from profiles.process import free_port
from tests.deploy import container
from tests.deploy.test_dockerfile import not_in_the_image
from tests.deploy.test_manifests import K8S, load
from tests.deploy.test_shutdown import get, post_in_flight, rerank_payload
from tests.es_standin import StandIn

pytestmark = pytest.mark.slow
IMAGE = os.environ.get("RERANK_IMAGE", "")
IN_FLIGHT = 20


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    if not IMAGE:
        pytest.skip("no image to run: `make image-test` builds one and runs these")
    cfg: dict[str, Any] = container.inspect(IMAGE)["Docker"]["config"]
    return cfg


async def _output(argv: list[str]) -> str:
    async with container.run(IMAGE, argv=argv) as box:
        rc = await asyncio.wait_for(box.proc.wait(), 120)
        assert box.reader is not None
        await box.reader
        assert rc == 0, box.log
        return box.log


async def test_metadata_and_what_the_runtime_never_loads(config: dict[str, Any]) -> None:
    uid, _, gid = config["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, config["User"]
    check = config.get("Healthcheck") or {}
    assert check.get("Test", [""])[0] == "CMD", "HEALTHCHECK lost: build with --format docker"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= env_names()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert f"{env['RERANK_PORT']}/tcp" in config["ExposedPorts"]
    listing = await _output(
        [
            "python",
            "-c",
            "import importlib.metadata as m, os, json; print(json.dumps([sorted("
            "d.metadata['Name'].lower() for d in m.distributions()), sorted(os.listdir("
            "'/opt/rerank/models/all-MiniLM-L6-v2'))]))",
        ]
    )
    installed, model_files = orjson.loads(listing.splitlines()[-1])
    absent = not_in_the_image() | {"pip", "setuptools"}
    assert "huggingface-hub" in absent
    assert not set(installed) & absent, sorted(set(installed) & absent)
    assert {"onnxruntime", "tokenizers", "rerank-service"} <= set(installed)
    assert "model.int8.onnx" in model_files and "model.onnx" not in model_files


async def _wait_ready(box: container.Container, port: int, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if box.proc.returncode is not None:
            raise AssertionError(f"exited with {box.proc.returncode}:\n{box.log}")
        try:
            if await get(port, "/readyz") == 200:
                return time.monotonic() - start
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"not ready within {limit_s:.0f}s:\n{box.log}")


async def _post(s: aiohttp.ClientSession, url: str, body: object) -> Any:
    async with s.post(url, json=body) as r:
        assert r.status == 200, f"{url}: {r.status} {await r.text()}"
        return await r.json()


async def test_serves_passes_its_healthcheck_and_drains_on_sigterm(
    config: dict[str, Any],
) -> None:
    port = free_port()
    start_period = config["Healthcheck"]["StartPeriod"] / 1e9
    # The rerank time limit lifted: 20 requests at once on a loaded CI machine must not 503.
    admin = free_port()  # the image's 8081 may be taken on the host network
    env = {
        "RERANK_PORT": str(port),
        "RERANK_ADMIN_PORT": str(admin),
        "RERANK_RERANK_MAX_MS": "600000",
    }
    async with container.run(IMAGE, env=env) as box:
        ready_after = await _wait_ready(box, port, start_period)
        print(f"ready {ready_after:.1f}s after start (start period {start_period:.0f}s)")
        base = f"http://127.0.0.1:{port}"
        docs = ["Paris is the capital of France.", "Bananas are yellow."]
        async with aiohttp.ClientSession() as s:
            found = await _post(s, base + "/v1/search", {"query": "sort a list", "budget_ms": 5000})
            assert found["hits"] and found["backend"] == "embedded", found
            v2 = await _post(s, base + "/v2/rerank", {"query": "capital", "documents": docs})
            assert sorted(r["index"] for r in v2["results"]) == [0, 1], v2
            tei = await _post(s, base + "/rerank", {"query": "capital", "texts": docs})
            assert tei[0]["index"] == 0 and len(tei) == 2, tei
        ports = {"RERANK_PORT": str(port), "RERANK_ADMIN_PORT": str(admin)}
        assert await box.exec(config["Healthcheck"]["Test"][1:], ports) == 0
        pid = box.service_pid()
        assert pid is not None, box.log
        uid, _, gid = config["User"].partition(":")
        assert box.ids(pid) == ([uid] * 4, [gid] * 4), "the service runs as the image's USER"

        in_flight = [
            await post_in_flight(port, "/v1/rerank", rerank_payload(8, salt=i))
            for i in range(IN_FLIGHT)
        ]
        os.kill(pid, signal.SIGTERM)
        results = await asyncio.gather(*(r.response() for r in in_flight))
        rc = await asyncio.wait_for(box.proc.wait(), 120)
        assert box.reader is not None
        await box.reader
    assert [status for status, _, _ in results] == [200] * IN_FLIGHT, box.log
    assert all(orjson.loads(body)["meta"]["scored"] == 8 for _, _, body in results)
    assert rc == 0, box.log
    assert "every request in flight finished" in box.log, box.log


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _as_the_manifest_runs_it(
    manifest: dict[str, Any], config_map: dict[str, str], es_url: str
) -> dict[str, Any]:
    """The container's env (ConfigMap, then literal values; secrets absent: no API key;
    resourceFieldRef: the limit), user, read-only root and emptyDir tmpfs mounts."""
    pod = _pod(manifest)
    (c,) = pod["containers"]
    env = dict(config_map) if c.get("envFrom") else {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref := e.get("valueFrom", {}).get("resourceFieldRef"):
            env[e["name"]] = str(c["resources"][ref["resource"].split(".")[0]]["cpu"])
    env["RERANK_ES_URL"] = es_url
    empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    sec = pod["securityContext"]
    return {
        "env": env,
        "argv": (c.get("command") or []) + (c.get("args") or []) or None,
        "user": f"{sec['runAsUser']}:{sec['runAsGroup']}",
        "read_only": c["securityContext"].get("readOnlyRootFilesystem", False),
        "tmpfs": [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in empty],
    }


async def test_index_job_and_deployment_run_as_their_manifests_say(
    config: dict[str, Any], es_standin: tuple[StandIn, str]
) -> None:
    """Read-only root, non-root user, emptyDir /tmp, the ConfigMap's settings: the Job fills
    (a stand-in for) Elasticsearch from the corpus in the image, then the Deployment's
    container searches it."""
    standin, url = es_standin
    (cm,) = load(K8S / "configmap.yaml")
    (job,) = [d for d in load(K8S / "index-job.yaml") if d["kind"] == "Job"]
    (deploy,) = load(K8S / "deployment.yaml")
    job_run = _as_the_manifest_runs_it(job, cm["data"], url)
    assert job_run["read_only"] and job_run["tmpfs"] == ["/tmp"]
    async with container.run(IMAGE, **job_run) as box:
        rc = await asyncio.wait_for(box.proc.wait(), 900)
        assert box.reader is not None
        await box.reader
    assert rc == 0, box.log
    index = standin.aliases[cm["data"]["RERANK_ES_INDEX"]]
    assert len(standin.docs[index]) > 1000, box.log

    port = free_port()
    serve = _as_the_manifest_runs_it(deploy, cm["data"], url)
    serve["env"]["RERANK_PORT"] = str(port)
    serve["env"]["RERANK_ADMIN_PORT"] = str(free_port())  # 8081 may be taken on the host
    assert serve["read_only"]
    async with container.run(IMAGE, **serve) as box:
        await _wait_ready(box, port, config["Healthcheck"]["StartPeriod"] / 1e9)
        async with aiohttp.ClientSession() as s:
            body = {"query": "sort a list in place", "budget_ms": 10_000}
            found = await _post(s, f"http://127.0.0.1:{port}/v1/search", body)
        assert found["backend"] == "elasticsearch" and found["hits"], found
        assert found["scored"] > 0 and not found["partial"], found
        pid = box.service_pid()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        assert await asyncio.wait_for(box.proc.wait(), 120) == 0, box.log
