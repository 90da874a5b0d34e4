"""The Kubernetes permissions the operator needs, in one place.

The Helm chart's Role/ClusterRole (and manifests/rbac.yaml rendered from it) must grant exactly these rules:
a test renders the chart and compares. Whoever makes the operator call a new API verb adds it here first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One RBAC policy rule: verbs on resources of API groups ("" is the core group)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        return {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}


READ = ("get", "list", "watch")
EVENT_VERBS = ("create", "patch")

# What the handlers do in every watched namespace.
OPERATOR_RULES: tuple[Rule, ...] = (
    Rule(("finetune.dev",), ("finetunejobs",), (*READ, "patch", "update")),
    Rule(("finetune.dev",), ("finetunejobs/status",), ("get", "patch", "update")),
    # Children carry blockOwnerDeletion: the API server (OwnerReferencesPermissionEnforcement) lets only who may
    # update the owner's finalizers set it.
    Rule(("finetune.dev",), ("finetunejobs/finalizers",), ("update",)),
    Rule(("batch",), ("jobs",), (*READ, "create", "delete")),
    # Pods: watched; deleted with grace 0 when a lost node cannot finish their deletion; an older operator's
    # own worker pods are deleted.
    Rule(("",), ("pods",), (*READ, "delete", "patch")),
    Rule(("",), ("services", "configmaps"), (*READ, "create", "delete")),
    Rule(("",), ("pods/log",), ("get",)),
    # Events: posted about FineTuneJobs; read for the Job controller's FailedCreate warnings about its pods.
    Rule(("",), ("events",), (*EVENT_VERBS, "list")),
    Rule(("events.k8s.io",), ("events",), EVENT_VERBS),
    # Kueue's word on a queued Job (why it waits, or that it was preempted); where Kueue is absent, unused.
    Rule(("kueue.x-k8s.io",), ("workloads",), ("get", "list")),
)

# What kopf itself needs to serve all namespaces: notice CRD changes and new namespaces.
CLUSTERWIDE_RULES: tuple[Rule, ...] = (
    Rule(("apiextensions.k8s.io",), ("customresourcedefinitions",), READ),
    Rule(("",), ("namespaces",), ("list", "watch")),
)

# Only with peering (several replicas, one active); the default is one replica run with --standalone. create:
# the operator makes its peering object where it is missing (peering.py).
PEERING_RULES: tuple[Rule, ...] = (Rule(("kopf.dev",), ("kopfpeerings",), (*READ, "patch", "create")),)
CLUSTER_PEERING_RULES: tuple[Rule, ...] = (
    Rule(("kopf.dev",), ("clusterkopfpeerings",), (*READ, "patch", "create")),
)


def required_rules(*, clusterwide: bool, peering: bool) -> tuple[Rule, ...]:
    """Every rule the operator needs for one configuration of the chart."""
    rules = OPERATOR_RULES
    if clusterwide:
        rules += CLUSTERWIDE_RULES
    if peering:
        rules += CLUSTER_PEERING_RULES if clusterwide else PEERING_RULES
    return rules


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    """Flatten RBAC rules (dicts as in a Role) into (apiGroup, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
