"""The operator's Role (manifests/rbac.yaml, rendered from the chart) grants exactly finetune_operator.rbac."""

from __future__ import annotations

from pathlib import Path

import yaml

from finetune_operator.rbac import CLUSTERWIDE_RULES, OPERATOR_RULES, grants, required_rules

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "rbac.yaml"


def role() -> dict:
    (found,) = [d for d in yaml.safe_load_all(RBAC.read_text()) if d and d["kind"] == "Role"]
    return found


def test_role_grants_exactly_the_required_rules() -> None:
    want = grants([r.to_dict() for r in required_rules(clusterwide=False, peering=False)])
    have = grants(role()["rules"])
    assert have - want == set(), f"granted but not needed: {sorted(have - want)}"
    assert want - have == set(), f"needed but not granted: {sorted(want - have)}"


def test_no_secret_access_and_no_wildcards() -> None:
    have = grants(role()["rules"])
    assert not any(resource == "secrets" for _, resource, _ in have), (
        "pods mount Secrets; the operator never reads them"
    )
    assert not any("*" in triple for triple in have)


def test_what_the_operator_does_is_granted() -> None:
    have = grants([r.to_dict() for r in OPERATOR_RULES])
    for need in [
        ("finetune.dev", "finetunejobs", "watch"),
        ("finetune.dev", "finetunejobs/status", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs", "delete"),
        ("", "pods", "watch"),
        ("", "pods", "delete"),
        ("", "events", "list"),
        ("kueue.x-k8s.io", "workloads", "list"),
        ("", "pods/log", "get"),
        ("", "services", "create"),
        ("", "configmaps", "create"),
        ("", "events", "create"),
        ("events.k8s.io", "events", "create"),
    ]:
        assert need in have, need
    assert ("", "pods", "create") not in have  # the Job controller creates the pods


def test_cluster_permissions_only_when_clusterwide_or_peering() -> None:
    namespaced = grants([r.to_dict() for r in required_rules(clusterwide=False, peering=False)])
    clusterwide = grants([r.to_dict() for r in required_rules(clusterwide=True, peering=False)])
    assert not any(resource in {"namespaces", "customresourcedefinitions"} for _, resource, _ in namespaced)
    assert ("", "namespaces", "watch") in clusterwide
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "list") in clusterwide
    peering = grants([r.to_dict() for r in required_rules(clusterwide=False, peering=True)])
    verbs = ("get", "list", "watch", "patch", "create")  # create: the operator makes its peering object
    assert peering - namespaced == {("kopf.dev", "kopfpeerings", v) for v in verbs}


def test_no_configuration_grants_secrets_exec_or_privilege_escalation() -> None:
    """Whatever the chart's options, the operator can neither read credentials, run code in a pod, nor widen
    its own permissions; cluster-wide it only reads."""
    forbidden = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token", "nodes"}
    for clusterwide in (False, True):
        for peering in (False, True):
            have = grants([r.to_dict() for r in required_rules(clusterwide=clusterwide, peering=peering)])
            where = f"clusterwide={clusterwide}, peering={peering}"
            assert not {resource for _, resource, _ in have} & forbidden, where
            assert not any(group == "rbac.authorization.k8s.io" for group, _, _ in have), where
            assert not {verb for _, _, verb in have} & {"escalate", "bind", "impersonate", "deletecollection"}, where
    cluster_only = grants([r.to_dict() for r in CLUSTERWIDE_RULES])
    assert {verb for _, _, verb in cluster_only} <= {"get", "list", "watch"}
