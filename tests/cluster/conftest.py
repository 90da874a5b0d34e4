"""The FineTuneJob CRD installed once into the real control plane, the way a user installs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import api
from tests.fixtures.kube import KubeApi

ROOT = Path(__file__).resolve().parents[2]
CRD = f"{api.PLURAL}.{api.GROUP}"


@pytest.fixture(scope="session")
def finetunejob_crd(kube_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`kubectl apply --server-side -f manifests/crd.yaml`, then wait until the API serves the kind."""
    kube = KubeApi(kube_cluster, "default", tmp_path_factory.mktemp("crd"), None)
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    return CRD


@pytest.fixture
def ftj_api(cluster_api: KubeApi, finetunejob_crd: str) -> KubeApi:
    """A fresh namespace on the cluster, with the FineTuneJob CRD installed."""
    return cluster_api


def get_json(kube: KubeApi, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)
