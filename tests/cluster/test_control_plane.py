"""What the real control plane enforces, driven with kubectl as a user would: the garbage collector, ResourceQuota,
PodSecurity, the scheduler's binding and Unschedulable reason, and service-account tokens from the TokenRequest
API under RBAC. Each is something the operator meets on a real cluster and the stand-in API server only imitates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import ROOT, get_json
from tests.fixtures.kube import KubeApi, eventually, service_account_kubeconfig

pytestmark = pytest.mark.slow


def apply(kube: KubeApi, *objects: dict[str, Any], check: bool = True):
    return kube.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects), check=check)


def pod(name: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "trainer:test", **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container], **spec}}  # fmt: skip


def test_garbage_collector_deletes_children_of_a_deleted_job(ftj_api: KubeApi):
    ftj_api.kubectl("apply", "--server-side", "-f", str(ROOT / "examples" / "finetunejob.yaml"))
    job = get_json(ftj_api, "ftj", "yahoo-topics-minilm")
    owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"],
             "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [owner]}}
    apply(ftj_api, child, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unowned"}})

    ftj_api.kubectl("delete", "ftj", "yahoo-topics-minilm")

    def configmaps() -> set[str]:
        return {c["metadata"]["name"] for c in get_json(ftj_api, "configmaps")["items"]}

    # The garbage collector watches a new CRD's kind only after its discovery resync (every 30 s), so the first
    # job of a fresh CRD can take that long to be collected.
    eventually(lambda: "child" not in configmaps(), timeout=120, interval=0.5, what="owned ConfigMap collected")
    assert "unowned" in configmaps()


@pytest.mark.parametrize(
    ("quota", "container", "refusal"),
    [
        ({"pods": "0"}, {}, "exceeded quota: q, requested: pods=1, used: pods=0, limited: pods=0"),
        ({"limits.cpu": "2"}, {}, "failed quota: q: must specify limits.cpu for: main"),
    ],
    ids=["pods", "limits"],
)
def test_resource_quota_refusal_comes_from_the_api_server(cluster_api: KubeApi, quota, container, refusal):
    apply(cluster_api, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                        "spec": {"hard": quota}})  # fmt: skip
    # Admission counts against a quota only once the controller-manager's quota controller has computed its usage.
    eventually(lambda: get_json(cluster_api, "resourcequota", "q").get("status", {}).get("used"),
               timeout=60, interval=0.2, what="quota usage computed")  # fmt: skip

    result = apply(cluster_api, pod("worker", container=container), check=False)

    assert result.returncode != 0
    assert 'pods "worker" is forbidden' in result.stderr and refusal in result.stderr, result.stderr


def test_limit_range_fills_in_limits_the_pod_left_out(cluster_api: KubeApi):
    limits = {"type": "Container", "default": {"cpu": "1", "memory": "1Gi"}, "defaultRequest": {"cpu": "100m"}}
    apply(cluster_api, {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "defaults"},
                        "spec": {"limits": [limits]}})  # fmt: skip
    apply(cluster_api, pod("export"))
    resources = get_json(cluster_api, "pod", "export")["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "1Gi"}}


def test_pod_security_admission_refuses_a_privileged_pod(cluster_api: KubeApi):
    cluster_api.kubectl("label", "namespace", cluster_api.namespace, "pod-security.kubernetes.io/enforce=restricted")
    result = apply(cluster_api, pod("root", container={"securityContext": {"privileged": True}}), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest": privileged' in result.stderr, result.stderr


def test_scheduler_binds_to_a_fitting_node_and_reports_unschedulable(cluster_api: KubeApi):
    node = f"node-{cluster_api.namespace}"
    # Tainted so that no other test's pod lands here; only this test's pods tolerate it.
    taint = {"key": "finetune.dev/test-node", "value": node, "effect": "NoSchedule"}
    apply(cluster_api, {"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": node, "labels": {"finetune.dev/test-node": node}},
                        "spec": {"taints": [taint]}})  # fmt: skip
    try:
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "10", "nvidia.com/gpu": "2"}
        cluster_api.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p",
                            json.dumps({"status": {"capacity": capacity, "allocatable": capacity}}))  # fmt: skip
        placement = {"nodeSelector": {"finetune.dev/test-node": node},
                     "tolerations": [{"operator": "Exists"}]}  # fmt: skip
        fits = {"resources": {"limits": {"nvidia.com/gpu": "2"}}}
        too_big = {"resources": {"limits": {"nvidia.com/gpu": "3"}}}
        apply(cluster_api, pod("fits", container=fits, **placement), pod("too-big", container=too_big, **placement))

        bound = eventually(lambda: get_json(cluster_api, "pod", "fits")["spec"].get("nodeName"),
                           timeout=60, interval=0.2, what="pod bound by the scheduler")  # fmt: skip
        assert bound == node

        def unschedulable() -> dict[str, Any] | None:
            conditions = get_json(cluster_api, "pod", "too-big").get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

        condition = eventually(unschedulable, timeout=60, interval=0.2, what="PodScheduled=False")
        assert condition["reason"] == "Unschedulable"
        assert "Insufficient nvidia.com/gpu" in condition["message"]
    finally:
        cluster_api.kubectl("delete", "node", node, "--wait=false", check=False)


def test_token_from_token_request_authenticates_under_rbac(cluster_api: KubeApi, tmp_path: Path):
    ns = cluster_api.namespace
    apply(cluster_api,
          {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
          {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-configmaps"},
           "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
          {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
           "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})  # fmt: skip
    # `kubectl create token` calls the TokenRequest API (serviceaccounts/token), as the kubelet does for a pod.
    kubeconfig = service_account_kubeconfig(cluster_api, "reader", tmp_path / "sa.kubeconfig")
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    as_reader = KubeApi(tmp_path / "sa.kubeconfig", ns, tmp_path)
    apply(cluster_api, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}})

    who = json.loads(as_reader.kubectl("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
    assert "settings" in as_reader.kubectl("get", "configmaps").stdout
    denied = as_reader.kubectl("get", "secrets", check=False)
    assert denied.returncode != 0
    assert f'User "system:serviceaccount:{ns}:reader" cannot list resource "secrets"' in denied.stderr
    wrong = as_reader.kubectl("--token", token[:-4] + "AAAA", "get", "configmaps", check=False)
    assert wrong.returncode != 0 and "Unauthorized" in wrong.stderr
