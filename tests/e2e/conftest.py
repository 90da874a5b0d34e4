"""End-to-end helpers: the CRD, the real operator process (`python -m finetune_operator`), job manifests.

On the stand-in (default) the node agent runs pods as local processes, so jobs read and write local paths.
Against a real cluster (FINETUNE_E2E_REAL_CLUSTER=1, KUBECONFIG) the same tests take their storage, data,
model, image and Triton from FINETUNE_E2E_* variables (docs/e2e.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import api, crd
from tests.fixtures.kube import KubeApi, eventually, real_cluster
from tests.fixtures.processes import free_port

BIN = Path(sys.executable).parent


def install_crd(kube: KubeApi) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(kube.client())
    try:
        ext.create_custom_resource_definition(crd.crd())
    except ApiException as e:
        if e.status != 409:
            raise
    eventually(lambda: _served(kube), timeout=30, what="FineTuneJob API served")


def _served(kube: KubeApi) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CustomObjectsApi(kube.client()).list_namespaced_custom_object(
            api.GROUP, api.VERSION, kube.namespace, api.PLURAL
        )
    except ApiException:
        return False
    return True


class Operator:
    """The real operator as a subprocess: `python -m finetune_operator --namespace NS`; start/kill/stop by pid."""

    def __init__(self, kube: KubeApi, log_dir: Path, env: dict[str, str]):
        self.kube, self.log_dir, self.env = kube, log_dir, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.metrics_port = int(env["FINETUNE_METRICS_PORT"])

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.runs}.log"

    def start(self) -> Operator:
        self.runs += 1
        cmd = [sys.executable, "-m", "finetune_operator", f"--namespace={self.kube.namespace}", "--verbose"]
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig), **self.env}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        eventually(
            lambda: self.proc.poll() is not None or b"Starting the watch-stream" in self.log.read_bytes(),
            timeout=60, interval=0.1, what="operator watching",
        )  # fmt: skip
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- operator run {i} ---\n" + (self.log_dir / f"operator-{i}.log").read_text()[-6000:]
            for i in range(1, self.runs + 1)
        )

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def operator_env(tmp_path: Path) -> dict[str, str]:
    """Operator settings for tests: fast polls and backoff, the venv's launchers, free ports."""
    if real_cluster():  # the pods run the trainer image; the operator runs here with the cluster's kubeconfig
        local = {"FINETUNE_TRAINER_IMAGE": os.environ["FINETUNE_E2E_IMAGE"]}
        local.update({k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ})
    else:  # the node agent runs pods as local processes of this virtualenv
        local = {"FINETUNE_TRAINER_PYTHON": sys.executable,
                 "FINETUNE_TRAINER_METRICS_PORT": "0"}  # fmt: skip
    return {
        **local,
        "FINETUNE_METRICS_PORT": str(free_port()),
        "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
        "FINETUNE_POLL_SECONDS": "1",
        "FINETUNE_BACKOFF_SECONDS": "1",
        "FINETUNE_TERMINATION_GRACE_SECONDS": "20",
        "FINETUNE_PUBLISH_TIMEOUT_SECONDS": "120",
    }


@pytest.fixture
def job_controller(kube_api: KubeApi) -> None:
    """The operator runs each worker group and export try as a batch/v1 Job, which only a real Job controller
    runs: tests that run jobs skip on the API stand-in. They run against a real cluster
    (FINETUNE_E2E_REAL_CLUSTER=1); tests/cluster runs the same scenarios on the test cluster."""
    if kube_api.stand_in:
        pytest.skip("needs a Job controller: the API stand-in has none (see tests/cluster for these on the test "
                    "cluster)")


@pytest.fixture
def operator(kube_api: KubeApi, node_agent: Any, operator_env: dict[str, str], tmp_path: Path) -> Iterator[Operator]:
    """The CRD installed and the operator running in the test's namespace (stopped by pid at the end)."""
    install_crd(kube_api)
    op = Operator(kube_api, tmp_path, operator_env)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def cluster_checkpoint_spec() -> dict[str, Any]:
    """On a real cluster: checkpoints on the S3 that FINETUNE_E2E_STORAGE names, credentials in the Secret
    FINETUNE_E2E_S3_SECRET of the test namespace (created by the `jobs` fixture from AWS_* variables)."""
    s3 = {"credentialsSecret": E2E_SECRET}
    if endpoint := os.environ.get("FINETUNE_E2E_S3_ENDPOINT"):
        s3["endpoint"] = endpoint
    if region := os.environ.get("AWS_REGION"):
        s3["region"] = region
    return {"storage": os.environ["FINETUNE_E2E_STORAGE"], "s3": s3}


E2E_SECRET = "finetune-e2e-s3"


class Jobs:
    """FineTuneJobs of one test: create, read, patch, delete, and wait on status."""

    def __init__(self, kube: KubeApi):
        from kubernetes import client

        self.kube = kube
        self.api = client.CustomObjectsApi(kube.client())
        self.core = client.CoreV1Api(kube.client())

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(api.GROUP, api.VERSION, self.kube.namespace, api.PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(api.GROUP, api.VERSION, self.kube.namespace, api.PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.kube.namespace, api.PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(api.GROUP, api.VERSION, self.kube.namespace, api.PLURAL, name)

    def exists(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.get(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def pods(self, name: str, component: str = "trainer") -> list[Any]:
        selector = f"finetune.dev/job={name},app.kubernetes.io/component={component}"
        return self.core.list_namespaced_pod(self.kube.namespace, label_selector=selector).items

    def log(self, pod: str, container: str = "trainer") -> str:
        """A container's log; empty while the pod does not exist yet or the container has not started (the API
        answers 404, or 400 "waiting to start")."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_pod_log(pod, self.kube.namespace, container=container)
        except ApiException as e:
            if e.status in (400, 404):
                return ""
            raise

    def children(self, name: str) -> dict[str, list[str]]:
        selector = f"finetune.dev/job={name}"
        ns = self.kube.namespace
        return {
            "pods": [p.metadata.name for p in self.core.list_namespaced_pod(ns, label_selector=selector).items],
            "configmaps": [
                c.metadata.name for c in self.core.list_namespaced_config_map(ns, label_selector=selector).items
            ],
            "services": [s.metadata.name for s in self.core.list_namespaced_service(ns, label_selector=selector).items],
        }

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(self.kube.namespace).items
        return [f"{e.reason}: {e.message}" for e in items if e.involved_object and e.involved_object.name == name]

    def wait(self, name: str, check: Callable[[dict[str, Any]], Any], timeout: float, what: str,
             operator: Operator | None = None) -> dict[str, Any]:  # fmt: skip
        last: dict[str, Any] = {}

        def probe() -> Any:
            nonlocal last
            last = self.status(name)
            return check(last)

        try:
            eventually(probe, timeout=timeout, interval=0.25, what=what)
        except AssertionError as e:
            detail = json.dumps(last, indent=1)[-3000:]
            logs = operator.logs()[-6000:] if operator else ""
            raise AssertionError(f"{e}\nstatus: {detail}\nevents: {self.events(name)}\n{logs}") from None
        return last


@pytest.fixture
def jobs(kube_api: KubeApi) -> Jobs:
    jobs = Jobs(kube_api)
    if real_cluster():
        data = {"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}
        jobs.core.create_namespaced_secret(kube_api.namespace, {"metadata": {"name": E2E_SECRET}, "stringData": data})
    return jobs


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") in phases


@pytest.fixture
def job_manifest(tiny_bert: Path, sentiment_csv: tuple[Path, Path], tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A small learnable FineTuneJob: tiny BERT, 2 processes in one pod, checkpoints every few steps."""
    train, val = sentiment_csv
    checkpoint: dict[str, Any] = {"storage": str(tmp_path / "storage")}
    if real_cluster():
        checkpoint = cluster_checkpoint_spec()
    model = os.environ.get("FINETUNE_E2E_MODEL") or str(tiny_bert)

    def make(name: str, *, max_steps: int = 40, every: int = 10, serving: dict | None = None,
             **spec: Any) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name},
            "spec": {
                "model": {"name": model},
                "dataset": {
                    "train": os.environ.get("FINETUNE_E2E_TRAIN") or str(train),
                    "validation": os.environ.get("FINETUNE_E2E_VALIDATION") or str(val),
                },
                "hyperparameters": {
                    "maxSteps": max_steps,
                    "batchSize": 8,
                    "learningRate": 3e-3,
                    "evalSteps": every,
                    "warmupRatio": 0.0,
                    "logEverySteps": 2,
                    "maxSeqLength": 32,
                },
                "resources": {"nodes": 1, "processesPerNode": 2, "cpu": "2", "memory": "2Gi"},
                "checkpoint": {**checkpoint, "everySteps": every},
                "backoffLimit": 3,
                **spec,
            },
        }
        if image := os.environ.get("FINETUNE_E2E_IMAGE"):
            body["spec"].setdefault("template", {})["image"] = image
        if serving:
            body["spec"]["serving"] = serving
        return body

    return make


__all__ = ["Jobs", "Operator", "install_crd", "phase_is", "real_cluster"]


class TritonTarget:
    """Publication into a model repository that a real Triton serves (python backend: the onnxruntime backend
    is absent here); on a real cluster FINETUNE_E2E_MODEL_REPOSITORY and FINETUNE_E2E_TRITON_URL name them."""

    reasons = ("Exporting", "Publishing", "ModelReady")
    model = "sentiment"

    def __init__(self, repository: str, http_url: str):
        self.repository, self.http_url = repository, http_url
        self.serving = {"enabled": True, "repository": repository, "tritonUrl": f"http://{http_url}",
                        "backend": "python", "modelName": self.model, "maxBatchSize": 8}  # fmt: skip

    def check(self, status: dict[str, Any]) -> None:
        """status.model names a ready version, and Triton classifies text with it."""
        import numpy as np
        import tritonclient.http as httpclient

        model = status["model"]
        assert model["name"] == self.model and model["ready"] is True and model["version"] >= 1, model
        assert model["repository"] == self.repository and model["endpoint"] == f"http://{self.http_url}"
        client = httpclient.InferenceServerClient(self.http_url)
        try:
            assert client.is_model_ready(self.model, str(model["version"]))
            texts = np.array([["a wonderful and brilliant film"], ["an awful and boring film"]], dtype=object)
            text = httpclient.InferInput("TEXT", list(texts.shape), "BYTES")
            text.set_data_from_numpy(texts)
            result = client.infer(f"{self.model}_text", [text])
            labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("LABEL").ravel()]
            assert labels == ["positive", "negative"], labels
        finally:
            client.close()


@pytest.fixture
def serving_target(request: pytest.FixtureRequest, tmp_path: Path) -> TritonTarget:
    if real_cluster():
        return TritonTarget(os.environ["FINETUNE_E2E_MODEL_REPOSITORY"], os.environ["FINETUNE_E2E_TRITON_URL"])
    repository = tmp_path / "model-repository"
    repository.mkdir()
    server = request.getfixturevalue("start_triton")(repository)
    return TritonTarget(str(repository), server.http_url)
