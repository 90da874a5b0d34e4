"""The Kubernetes API semantics the operator relies on, checked as a client of a real API server would.

They run against the stand-in (tests/fixtures/kubeapi) by default and against a real cluster with
FINETUNE_E2E_REAL_CLUSTER=1 and KUBECONFIG set; tests of the stand-in's fault hooks skip there.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fixtures.kube import KubeApi, eventually, kopf_operator

GROUP = "kubeapi-test.finetune.dev"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def raw(api: client.ApiClient, method: str, path: str, body: Any = None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None) -> tuple[int, Any]:  # fmt: skip
    """One request with an explicit content type; returns (HTTP status, decoded JSON body)."""
    params = api.param_serialize(method=method, resource_path=path, query_params=query or [], body=body,
                                 header_params={"Content-Type": content_type, "Accept": "application/json"},
                                 auth_settings=["BearerToken"])  # fmt: skip
    response = api.call_api(*params)
    response.read()
    return response.status, json.loads(response.data or b"null")


def status_of(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


class Widgets:
    """A throwaway CRD with a status subresource, a schema with defaults, and printer columns."""

    def __init__(self, kube: KubeApi) -> None:
        suffix = uuid.uuid4().hex[:6].translate(str.maketrans("0123456789", "ghijklmnop"))
        self.kube, self.group, self.version = kube, GROUP, "v1"
        self.plural, self.kind = f"widget{suffix}s", f"Widget{suffix.capitalize()}"
        self.short = f"wd{suffix}"
        self.api = kube.client()
        self.custom = client.CustomObjectsApi(self.api)
        self.ns = kube.namespace

    def crd(self) -> dict[str, Any]:
        spec_schema = {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1},
                "color": {"type": "string", "default": "blue", "enum": ["blue", "red", "green"]},
                "limits": {"type": "object", "default": {}, "properties": {"cpu": {"type": "string", "default": "1"}}},
                "tags": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "weight": {"type": "integer", "default": 1}}}},
            },
        }  # fmt: skip
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{self.plural}.{self.group}"},
            "spec": {
                "group": self.group,
                "scope": "Namespaced",
                "names": {
                    "plural": self.plural,
                    "singular": self.plural[:-1],
                    "kind": self.kind,
                    "shortNames": [self.short],
                    "categories": ["finetune-test"],
                },
                "versions": [
                    {
                        "name": self.version,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [
                            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        ],
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": spec_schema,
                                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                },
                            }
                        },
                    }
                ],
            },
        }

    def install(self) -> None:
        ext = client.ApiextensionsV1Api(self.api)
        ext.create_custom_resource_definition(self.crd())

        def established() -> bool:
            crd = ext.read_custom_resource_definition(f"{self.plural}.{self.group}")
            conditions = (crd.status.conditions or []) if crd.status else []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        eventually(established, timeout=30, what="CRD established")
        eventually(lambda: self.custom.list_namespaced_custom_object(self.group, self.version, self.ns, self.plural),
                   timeout=30, what="CRD served")  # fmt: skip

    def uninstall(self) -> None:
        try:
            client.ApiextensionsV1Api(self.api).delete_custom_resource_definition(f"{self.plural}.{self.group}")
        except ApiException as e:
            if e.status != 404:
                raise

    def body(self, name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": f"{self.group}/{self.version}", "kind": self.kind, "metadata": {"name": name},
                "spec": spec}  # fmt: skip

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(self.group, self.version, self.ns, self.plural,
                                                           self.body(name, **spec))  # fmt: skip

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(self.group, self.version, self.ns, self.plural, name)

    def patch(self, name: str, body: Any, status: bool = False) -> dict[str, Any]:
        if status:
            return self.custom.patch_namespaced_custom_object_status(self.group, self.version, self.ns, self.plural,
                                                                     name, body)  # fmt: skip
        return self.custom.patch_namespaced_custom_object(self.group, self.version, self.ns, self.plural, name, body)

    def path(self, name: str = "") -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{self.ns}/{self.plural}" + (f"/{name}" if name else "")


@pytest.fixture
def widgets(kube_api: KubeApi) -> Iterator[Widgets]:
    w = Widgets(kube_api)
    w.install()
    try:
        yield w
    finally:
        w.uninstall()


@pytest.fixture
def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.client())


def configmap(name: str, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **meta}, "data": {"k": "v"}}


# ----- discovery ---------------------------------------------------------------------------------------------


def test_discovery_lists_builtin_groups_and_registered_crds(kube_api: KubeApi, widgets: Widgets) -> None:
    api = kube_api.client()
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    for group in ("apps", "batch", "coordination.k8s.io", "apiextensions.k8s.io", "events.k8s.io", GROUP):
        assert group in groups
    core_names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/status", "pods/log", "configmaps", "secrets", "events", "namespaces"} <= core_names
    found = {r.name: r for r in widgets.custom.get_api_resources(GROUP, "v1").resources}
    resource = found[widgets.plural]
    assert (resource.kind, resource.singular_name, resource.namespaced) == (widgets.kind, widgets.plural[:-1], True)
    assert widgets.short in resource.short_names and "finetune-test" in resource.categories
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(resource.verbs)
    assert f"{widgets.plural}/status" in found
    assert client.VersionApi(api).get_code().major == "1"


def test_deleting_a_crd_unregisters_its_resource(kube_api: KubeApi) -> None:
    w = Widgets(kube_api)
    w.install()
    w.create("one", size=1)
    w.uninstall()

    def gone() -> bool:
        try:
            names = {r.name for r in w.custom.get_api_resources(GROUP, "v1").resources}
        except ApiException as e:
            return e.status == 404
        return w.plural not in names

    eventually(gone, timeout=30, what="CRD resource gone from discovery")


# ----- create, read, update ----------------------------------------------------------------------------------


def test_create_sets_server_fields_and_rejects_duplicates(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    made = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}, "data": {"a": "1"}})
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == len("gen-") + 5
    assert made.metadata.uid and made.metadata.creation_timestamp and int(made.metadata.resource_version) > 0
    core.create_namespaced_config_map(ns, configmap("fixed"))
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, configmap("fixed"))
    body = status_of(exc.value)
    assert (exc.value.status, body["kind"], body["reason"]) == (409, "Status", "AlreadyExists")
    assert '"fixed" already exists' in body["message"]
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("missing", ns)
    assert (exc.value.status, status_of(exc.value)["reason"]) == (404, "NotFound")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, configmap("Not_A_Name"))
    assert exc.value.status == 422 and "metadata.name" in status_of(exc.value)["message"]


def test_resource_versions_and_stale_update_conflict(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    first = core.create_namespaced_config_map(ns, configmap("cm"))
    first.data = {"k": "changed"}
    second = core.replace_namespaced_config_map("cm", ns, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "lost update"}
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map("cm", ns, first)
    assert (exc.value.status, status_of(exc.value)["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status_of(exc.value)["message"]
    same = core.replace_namespaced_config_map("cm", ns, second)
    assert same.metadata.resource_version == second.metadata.resource_version, "a no-op update changes nothing"
    listing = core.list_namespaced_config_map(ns)
    assert int(listing.metadata.resource_version) >= int(second.metadata.resource_version)


def test_generation_counts_spec_changes_only(widgets: Widgets) -> None:
    made = widgets.create("gen", size=1)
    assert made["metadata"]["generation"] == 1
    after_spec = widgets.patch("gen", {"spec": {"size": 2}})
    assert after_spec["metadata"]["generation"] == 2
    after_labels = widgets.patch("gen", {"metadata": {"labels": {"a": "b"}}})
    assert after_labels["metadata"]["generation"] == 2
    after_status = widgets.patch("gen", {"status": {"phase": "Running"}}, status=True)
    assert after_status["metadata"]["generation"] == 2
    assert int(after_status["metadata"]["resourceVersion"]) > int(after_labels["metadata"]["resourceVersion"])


def test_status_subresource_isolates_status_from_spec(widgets: Widgets) -> None:
    widgets.create("iso", size=1)
    main = widgets.patch("iso", {"spec": {"size": 5}, "status": {"phase": "Ignored"}})
    assert main["spec"]["size"] == 5 and "phase" not in (main.get("status") or {})
    sub = widgets.patch("iso", {"spec": {"size": 9}, "status": {"phase": "Running", "kopf": {"x": 1}}}, status=True)
    assert sub["spec"]["size"] == 5 and sub["status"] == {"phase": "Running", "kopf": {"x": 1}}
    assert widgets.get("iso")["status"]["phase"] == "Running"
    created = widgets.custom.create_namespaced_custom_object(
        GROUP, "v1", widgets.ns, widgets.plural, {**widgets.body("born", size=1), "status": {"phase": "Set"}}
    )
    assert "phase" not in (created.get("status") or {}), "status is not writable on create"


def test_patch_content_types(kube_api: KubeApi, core: client.CoreV1Api, widgets: Widgets) -> None:
    api, ns = kube_api.client(), kube_api.namespace
    core.create_namespaced_config_map(ns, {"metadata": {"name": "p"}, "data": {"a": "1", "b": "2"}})
    path = f"/api/v1/namespaces/{ns}/configmaps/p"
    code, body = raw(api, "PATCH", path, {"data": {"a": None, "c": "3"}}, MERGE)
    assert code == 200 and body["data"] == {"b": "2", "c": "3"}
    code, body = raw(api, "PATCH", path, [{"op": "add", "path": "/data/d", "value": "4"},
                                          {"op": "remove", "path": "/data/b"}], JSON_PATCH)  # fmt: skip
    assert code == 200 and body["data"] == {"c": "3", "d": "4"}
    code, body = raw(api, "PATCH", path, [{"op": "test", "path": "/data/c", "value": "wrong"}], JSON_PATCH)
    assert code == 422 and body["kind"] == "Status"
    code, body = raw(api, "PATCH", path, {"data": {"e": "5"}}, STRATEGIC)
    assert code == 200 and body["data"] == {"c": "3", "d": "4", "e": "5"}
    widgets.create("sp", size=1)
    code, body = raw(api, "PATCH", widgets.path("sp"), {"spec": {"size": 2}}, STRATEGIC)
    assert code == 415, "custom resources do not support strategic merge patch"
    code, body = raw(api, "PATCH", widgets.path("sp"), {"spec": {"size": 3}}, MERGE)
    assert code == 200 and body["spec"]["size"] == 3


def test_strategic_merge_patch_merges_containers_by_name(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    api, ns = kube_api.client(), kube_api.namespace
    pod = {"metadata": {"name": "smp"}, "spec": {"nodeSelector": {"finetune.dev/no-such-node": "x"},
           "containers": [{"name": "a", "image": "busybox", "command": ["true"]},
                          {"name": "b", "image": "busybox", "command": ["true"]}]}}  # fmt: skip
    core.create_namespaced_pod(ns, pod)
    patch = {"metadata": {"labels": {"x": "y"}}, "spec": {"activeDeadlineSeconds": 100}}
    code, body = raw(api, "PATCH", f"/api/v1/namespaces/{ns}/pods/smp", patch, STRATEGIC)
    assert code == 200 and [c["name"] for c in body["spec"]["containers"]] == ["a", "b"]
    assert body["metadata"]["labels"] == {"x": "y"}


# ----- selectors ---------------------------------------------------------------------------------------------


def test_label_and_field_selectors(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_config_map(ns, configmap("a", {"app": "web", "tier": "front"}))
    core.create_namespaced_config_map(ns, configmap("b", {"app": "web", "tier": "back"}))
    core.create_namespaced_config_map(ns, configmap("c", {"app": "db"}))
    core.create_namespaced_config_map(ns, configmap("d"))

    def names(**kw: str) -> list[str]:
        items = core.list_namespaced_config_map(ns, **kw).items
        return sorted(i.metadata.name for i in items if i.metadata.name in "abcd")

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier=back") == ["b"]
    assert names(label_selector="app!=web") == ["c", "d"]
    assert names(label_selector="app in (web, db),tier notin (front)") == ["b", "c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!app") == ["d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c,metadata.namespace=" + ns) == ["a", "b", "d"]
    everywhere = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items
    assert sorted(i.metadata.name for i in everywhere if i.metadata.name in "abcd") == ["a", "b", "c", "d"]
    page = core.list_namespaced_config_map(ns, limit=3)
    assert len(page.items) == 3 and page.metadata._continue
    rest = core.list_namespaced_config_map(ns, limit=3, _continue=page.metadata._continue)
    assert {i.metadata.name for i in page.items + rest.items} >= {"a", "b", "c", "d"}
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(ns, field_selector="data.k=v")
    assert exc.value.status == 400
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(ns, label_selector="a in (b")
    assert exc.value.status == 400


def test_pod_field_selectors_on_an_unschedulable_pod(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_pod(ns, {"metadata": {"name": "waiting"}, "spec": {
        "nodeSelector": {"finetune.dev/no-such-node": "x"},
        "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}})  # fmt: skip
    pending = core.list_namespaced_pod(ns, field_selector="status.phase=Pending,spec.nodeName=").items
    assert [p.metadata.name for p in pending] == ["waiting"]
    assert core.list_namespaced_pod(ns, field_selector="status.phase=Running").items == []
    change = {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Running"}}
    patched = core.patch_namespaced_pod("waiting", ns, change)
    assert patched.status.phase == "Pending" and patched.metadata.labels == {"a": "b"}, "status is a subresource"


# ----- watch -------------------------------------------------------------------------------------------------


def test_watch_from_resource_version_sees_every_change(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, configmap("w", {"watched": "yes"}))
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "v2"}})
    core.patch_namespaced_config_map("w", ns, {"metadata": {"labels": {"watched": "no"}}})
    core.delete_namespaced_config_map("w", ns)
    seen = [(e["type"], e["object"].metadata.name, (e["object"].data or {}).get("k"))
            for e in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=start,
                                          timeout_seconds=2)]  # fmt: skip
    assert seen[:4] == [("ADDED", "w", "v"), ("MODIFIED", "w", "v2"), ("MODIFIED", "w", "v2"),
                        ("DELETED", "w", "v2")]  # fmt: skip
    selected = [(e["type"], e["object"].metadata.labels)
                for e in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=start,
                                              label_selector="watched=yes", timeout_seconds=2)]  # fmt: skip
    assert [t for t, _ in selected] == ["ADDED", "MODIFIED", "DELETED"], "leaving the selector reads as DELETED"


def test_watch_without_resource_version_starts_with_current_state(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_config_map(ns, configmap("pre"))
    began = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "pre")]
    assert 0.8 < time.monotonic() - began < 10, "timeoutSeconds ends the stream"


def test_watch_from_a_compacted_resource_version_is_gone(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    old = core.create_namespaced_config_map(ns, configmap("old")).metadata.resource_version
    core.create_namespaced_config_map(ns, configmap("new"))
    kube_api.compact()
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=old, timeout_seconds=2))
    assert exc.value.status == 410


def test_watch_bookmarks(kube_api: KubeApi) -> None:
    if not kube_api.stand_in:
        pytest.skip("a real API server sends bookmarks about once a minute")
    api, ns = kube_api.client(), kube_api.namespace
    params = api.param_serialize(method="GET", resource_path=f"/api/v1/namespaces/{ns}/configmaps",
                                 query_params=[("watch", "true"), ("allowWatchBookmarks", "true"),
                                               ("timeoutSeconds", "2")], auth_settings=["BearerToken"])  # fmt: skip
    response = api.call_api(*params)
    lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert lines and all(e["type"] == "BOOKMARK" for e in lines)
    assert int(lines[0]["object"]["metadata"]["resourceVersion"]) > 0


def test_fault_hooks_drop_watches_and_inject_conflicts(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_config_map(ns, configmap("f"))
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, ns, timeout_seconds=30)
    assert next(stream)["type"] == "ADDED"
    began = time.monotonic()
    eventually(lambda: kube_api.drop_watches() >= 1, what="watch registered")
    assert list(stream) == [] and time.monotonic() - began < 10, "the dropped stream ends at once"
    kube_api.fail_next_writes("configmaps", 2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            core.patch_namespaced_config_map("f", ns, {"data": {"k": "x"}})
        assert (exc.value.status, status_of(exc.value)["reason"]) == (409, "Conflict")
    assert core.patch_namespaced_config_map("f", ns, {"data": {"k": "x"}}).data == {"k": "x"}


# ----- deletion ----------------------------------------------------------------------------------------------


def test_finalizers_hold_deletion_until_removed(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_config_map(ns, configmap("fin", finalizers=["finetune.dev/test"]))
    core.delete_namespaced_config_map("fin", ns)
    held = core.read_namespaced_config_map("fin", ns)
    assert held.metadata.deletion_timestamp is not None and held.metadata.finalizers == ["finetune.dev/test"]
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map("fin", ns, {"metadata": {"finalizers": ["finetune.dev/test", "other"]}})
    assert exc.value.status == 422
    core.patch_namespaced_config_map("fin", ns, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("fin", ns)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(gone, what="object removed once its finalizers are gone")


def _owner_ref(owner: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}


def test_garbage_collection_cascades_through_owner_references(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    owner = core.create_namespaced_config_map(ns, configmap("owner"))
    child = core.create_namespaced_config_map(ns, configmap("child", ownerReferences=[_owner_ref(owner)]))
    core.create_namespaced_config_map(ns, configmap("grandchild", ownerReferences=[_owner_ref(child)]))
    other = core.create_namespaced_config_map(ns, configmap("other-owner"))
    core.create_namespaced_config_map(ns, configmap("shared", ownerReferences=[_owner_ref(owner), _owner_ref(other)]))
    core.create_namespaced_config_map(ns, configmap("orphan-me", ownerReferences=[_owner_ref(other)]))
    core.delete_namespaced_config_map("owner", ns)

    def left() -> set[str]:
        return {c.metadata.name for c in core.list_namespaced_config_map(ns).items}

    eventually(lambda: {"owner", "child", "grandchild"}.isdisjoint(left()), timeout=30, what="dependents collected")
    shared = core.read_namespaced_config_map("shared", ns)
    assert [r.name for r in shared.metadata.owner_references] == ["other-owner"], "a live owner keeps it"
    core.delete_namespaced_config_map("other-owner", ns, propagation_policy="Orphan")
    eventually(lambda: "other-owner" not in left(), timeout=30, what="orphaning owner deleted")
    assert not core.read_namespaced_config_map("orphan-me", ns).metadata.owner_references
    first = core.create_namespaced_config_map(ns, configmap("foreground", finalizers=[]))
    core.create_namespaced_config_map(ns, configmap("fg-child", ownerReferences=[_owner_ref(first)]))
    core.delete_namespaced_config_map("foreground", ns, propagation_policy="Foreground")
    eventually(lambda: {"foreground", "fg-child"}.isdisjoint(left()), timeout=30, what="foreground deletion")


def test_deleting_a_namespace_removes_its_objects(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    extra = f"{kube_api.namespace}-x"
    core.create_namespace({"metadata": {"name": extra}})
    core.create_namespaced_config_map(extra, configmap("inside"))
    core.delete_namespace(extra)

    def gone() -> bool:
        try:
            core.read_namespace(extra)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(gone, timeout=60, what="namespace removed")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(extra, configmap("late"))
    assert exc.value.status == 404


# ----- custom resource schemas -------------------------------------------------------------------------------


def test_schema_violations_are_422_with_the_field_path(widgets: Widgets) -> None:
    for spec, field in (({}, "spec.size"), ({"size": "big"}, "spec.size"), ({"size": 0}, "spec.size"),
                        ({"size": 1, "color": "pink"}, "spec.color")):  # fmt: skip
        with pytest.raises(ApiException) as exc:
            widgets.create("bad", **spec)
        body = status_of(exc.value)
        assert (exc.value.status, body["reason"]) == (422, "Invalid"), spec
        assert field in body["message"] and widgets.kind in body["message"], body["message"]
    widgets.create("good", size=1)
    with pytest.raises(ApiException) as exc:
        widgets.patch("good", {"spec": {"size": -1}})
    assert exc.value.status == 422 and "spec.size" in status_of(exc.value)["message"]


def test_schema_defaults_and_pruning(widgets: Widgets) -> None:
    made = widgets.create("d", size=2, tags=[{"name": "a"}], unknown="dropped")
    assert made["spec"] == {"size": 2, "color": "blue", "limits": {"cpu": "1"},
                            "tags": [{"name": "a", "weight": 1}]}  # fmt: skip
    patched = widgets.patch("d", {"spec": {"color": None, "limits": {"cpu": "4"}}})
    assert patched["spec"]["color"] == "blue" and patched["spec"]["limits"] == {"cpu": "4"}


# ----- events and leases ------------------------------------------------------------------------------------


def test_events_in_both_apis_and_leases(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    api, ns = kube_api.client(), kube_api.namespace
    target = core.create_namespaced_config_map(ns, configmap("target"))
    core.create_namespaced_event(ns, {
        "metadata": {"generateName": "target."}, "type": "Normal", "reason": "Tested", "message": "core event",
        "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "target", "namespace": ns,
                           "uid": target.metadata.uid}})  # fmt: skip
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=target").items
    assert [(e.reason, e.message) for e in events] == [("Tested", "core event")]
    new_api = client.EventsV1Api(api)
    new_api.create_namespaced_event(ns, {
        "metadata": {"name": "target.v1"}, "type": "Normal", "reason": "Tested", "note": "new event",
        "action": "Test", "reportingController": "finetune.dev/test", "reportingInstance": "test",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "name": "target", "namespace": ns}})  # fmt: skip
    assert [e.note for e in new_api.list_namespaced_event(ns).items if e.metadata.name == "target.v1"] == ["new event"]
    leases = client.CoordinationV1Api(api)
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15}
    lease = leases.create_namespaced_lease(ns, {"metadata": {"name": "leader"}, "spec": spec})
    lease.spec.holder_identity = "b"
    leases.replace_namespaced_lease("leader", ns, lease)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as exc:
        leases.replace_namespaced_lease("leader", ns, lease)
    assert exc.value.status == 409
    assert leases.read_namespaced_lease("leader", ns).spec.holder_identity == "b"


# ----- kubectl -----------------------------------------------------------------------------------------------


def test_kubectl_apply_get_patch_delete(kube_api: KubeApi, widgets: Widgets) -> None:
    manifest = [widgets.body("from-kubectl", size=3),
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kcm"}, "data": {"a": "1"}}]  # fmt: skip
    text = yaml.safe_dump_all(manifest)
    out = kube_api.kubectl("apply", "--validate=false", "-f", "-", stdin=text).stdout
    assert "created" in out
    table = kube_api.kubectl("get", widgets.plural).stdout
    assert table.split()[:4] == ["NAME", "SIZE", "PHASE", "AGE"] and "from-kubectl" in table
    assert "from-kubectl" in kube_api.kubectl("get", widgets.short, "-o", "name").stdout
    manifest[1]["data"] = {"a": "2"}
    assert "configured" in kube_api.kubectl("apply", "--validate=false", "-f", "-",
                                            stdin=yaml.safe_dump_all(manifest)).stdout  # fmt: skip
    got = json.loads(kube_api.kubectl("get", "configmap", "kcm", "-o", "json").stdout)
    assert got["data"] == {"a": "2"}
    kube_api.kubectl("patch", widgets.plural, "from-kubectl", "--type=merge", "-p", '{"spec":{"size":7}}')
    assert widgets.get("from-kubectl")["spec"]["size"] == 7
    kube_api.kubectl("delete", "-f", "-", stdin=text)
    assert "No resources found" in kube_api.kubectl("get", widgets.plural).stderr


# ----- pods and the node agent -------------------------------------------------------------------------------


def _pod(name: str, script: str, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name}, "spec": {"restartPolicy": restart, "containers": [container], **spec}}


def _phase(core: client.CoreV1Api, ns: str, name: str, *phases: str) -> Any:
    def reached() -> Any:
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status.phase in phases else None

    return eventually(reached, timeout=60, what=f"pod {name} in {phases}")


def test_pod_runs_with_env_volumes_and_init_containers(kube_api: KubeApi, node_agent: Any,
                                                       core: client.CoreV1Api) -> None:  # fmt: skip
    ns = kube_api.namespace
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "conf"}, "data": {"greeting": "hello", "job.json": '{"steps": 3}'}}
    )
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    init = {"name": "prepare", "image": "busybox", "command": ["sh", "-c", "echo prepared > /scratch/ready"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}  # fmt: skip
    env = [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "greeting"}}},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "CONFIG", "value": "/etc/job/job.json"},
           {"name": "MESSAGE", "value": "$(GREETING) from $(POD)"}]  # fmt: skip
    script = 'echo "$MESSAGE $TOKEN"; cat "$CONFIG"; echo; cat ready; test -n "$IP"'
    mounts = [{"name": "conf", "mountPath": "/etc/job"}, {"name": "scratch", "mountPath": "/scratch"}]
    volumes = [{"name": "conf", "configMap": {"name": "conf"}}, {"name": "scratch", "emptyDir": {}}]
    main = {"env": env, "workingDir": "/scratch", "volumeMounts": mounts}
    pod = _pod("runner", script, initContainers=[init], container=main, volumes=volumes)
    core.create_namespaced_pod(ns, pod)
    done = _phase(core, ns, "runner", "Succeeded", "Failed")
    assert done.status.phase == "Succeeded", kube_api.kubectl("logs", "runner", check=False).stdout
    assert done.spec.node_name and done.status.pod_ip
    terminated = done.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert done.status.init_container_statuses[0].state.terminated.exit_code == 0
    logs = kube_api.kubectl("logs", "runner").stdout.splitlines()
    assert logs == ["hello from runner s3cret", '{"steps": 3}', "prepared"]
    assert core.read_namespaced_pod_log("runner", ns, container="main").startswith("hello from runner")


def test_pod_exit_codes_and_restart_policies(kube_api: KubeApi, node_agent: Any, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_pod(ns, _pod("fails", "echo failing; exit 3"))
    core.create_namespaced_pod(ns, _pod("retries", "test -f /state/once && exit 0; touch /state/once; exit 1",
                                        restart="OnFailure", container={"volumeMounts": [
                                            {"name": "state", "mountPath": "/state"}]},
                                        volumes=[{"name": "state", "emptyDir": {}}]))  # fmt: skip
    failed = _phase(core, ns, "fails", "Succeeded", "Failed")
    assert failed.status.phase == "Failed"
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    retried = _phase(core, ns, "retries", "Succeeded", "Failed")
    assert retried.status.phase == "Succeeded" and retried.status.container_statuses[0].restart_count == 1


def test_pod_hostname_and_service_names(kube_api: KubeApi, node_agent: Any, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_service(ns, {"metadata": {"name": "peers"}, "spec": {
        "clusterIP": "None", "selector": {"app": "peer"}, "ports": [{"name": "rdzv", "port": 29400}]}})  # fmt: skip
    script = 'echo "$HOSTNAME"; echo "$0"; echo "$PEER"'
    env = [{"name": "PEER", "value": f"peers.{ns}.svc.cluster.local"}]
    container = {"args": ["peer-0.peers:29400"], "env": env}
    pod = _pod("peer-pod", script, hostname="peer-0", subdomain="peers", container=container)
    core.create_namespaced_pod(ns, pod)
    done = _phase(core, ns, "peer-pod", "Succeeded", "Failed")
    assert done.status.phase == "Succeeded"
    lines = core.read_namespaced_pod_log("peer-pod", ns).splitlines()
    assert lines[0] == "peer-0"
    if kube_api.stand_in:
        assert lines[1:] == ["127.0.0.1:29400", "127.0.0.1"], "service names point at the only node"


def test_pod_deletion_stops_the_process(kube_api: KubeApi, node_agent: Any, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_pod(ns, _pod("sleeper", "echo started; exec sleep 300", terminationGracePeriodSeconds=2))
    running = _phase(core, ns, "sleeper", "Running")
    eventually(lambda: "started" in core.read_namespaced_pod_log("sleeper", ns), timeout=30, what="output")
    began = time.monotonic()
    core.delete_namespaced_pod("sleeper", ns, grace_period_seconds=1)
    try:  # terminating, or already stopped and removed (sleep exits on SIGTERM at once)
        assert core.read_namespaced_pod("sleeper", ns).metadata.deletion_timestamp is not None
    except ApiException as e:
        assert e.status == 404

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", ns)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(gone, timeout=30, what="pod removed after its process stopped")
    assert time.monotonic() - began < 25
    core.create_namespaced_pod(ns, _pod("stubborn", "trap '' TERM; echo started; sleep 300"))
    _phase(core, ns, "stubborn", "Running")
    eventually(lambda: "started" in core.read_namespaced_pod_log("stubborn", ns), timeout=30, what="output")
    began = time.monotonic()
    kube_api.kubectl("delete", "pod", "stubborn", "--grace-period=1", "--wait=true", timeout=60)
    assert time.monotonic() - began < 25, "SIGKILL after the grace period"
    assert "stubborn" not in kube_api.kubectl("get", "pods", "-o", "name").stdout
    if kube_api.stand_in:
        pid = int(running.status.container_statuses[0].container_id.rsplit("/", 1)[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_kill_hook_simulates_a_crash(kube_api: KubeApi, node_agent: Any, core: client.CoreV1Api) -> None:
    ns = kube_api.namespace
    core.create_namespaced_pod(ns, _pod("victim", "exec sleep 300"))
    _phase(core, ns, "victim", "Running")
    assert node_agent.kill_pod(ns, "victim", signal.SIGKILL) == 1
    crashed = _phase(core, ns, "victim", "Failed")
    assert crashed.status.container_statuses[0].state.terminated.exit_code == 128 + signal.SIGKILL


def test_kill_reaches_processes_in_sessions_of_their_own(kube_api: KubeApi, node_agent: Any,
                                                          core: client.CoreV1Api, tmp_path: Path) -> None:  # fmt: skip
    """As torchrun's workers are: a runtime killing the container kills them too, not only its process group."""
    if not kube_api.stand_in:
        pytest.skip("the stand-in's own process handling")
    ns = kube_api.namespace
    pidfile = tmp_path / "worker.pid"
    script = f"setsid sh -c 'echo $$$$ > {pidfile}; exec sleep 300' & wait"  # $$ is the API's escape for $
    core.create_namespaced_pod(ns, _pod("group-leader", script))
    _phase(core, ns, "group-leader", "Running")
    eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30, what="worker pid")
    worker = int(pidfile.read_text())
    assert os.getpgid(worker) != os.getpgid(os.getpid())
    assert node_agent.kill_pod(ns, "group-leader", signal.SIGKILL) == 1
    _phase(core, ns, "group-leader", "Failed")

    def dead() -> bool:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z"  # reaped by init soon

    eventually(dead, timeout=10, what="the worker in its own session killed")


def test_termination_message_comes_from_the_termination_message_path(kube_api: KubeApi, node_agent: Any,
                                                                     core: client.CoreV1Api) -> None:  # fmt: skip
    ns = kube_api.namespace
    env = [{"name": "MESSAGE_FILE", "value": "/dev/termination-log"}]
    core.create_namespaced_pod(ns, _pod("reporter", 'echo "error: bad column" > "$MESSAGE_FILE"; exit 2',
                                        container={"env": env}))  # fmt: skip
    custom = {"terminationMessagePath": "/tmp/why", "args": []}
    core.create_namespaced_pod(ns, _pod("custom", 'printf "published: v3" > /tmp/why', container=custom))
    failed = _phase(core, ns, "reporter", "Succeeded", "Failed")
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (2, "error: bad column\n")
    done = _phase(core, ns, "custom", "Succeeded", "Failed")
    assert done.status.container_statuses[0].state.terminated.message == "published: v3"


# ----- the real kopf operator against this API -------------------------------------------------------------

OPERATOR = """
import kopf
import kubernetes


@kopf.on.startup()
def configure(settings, **_):
    settings.posting.level = 20
    settings.watching.server_timeout = 30


@kopf.on.create("{group}", "v1", "{plural}")
def create(spec, name, namespace, body, logger, **_):
    child = {{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": name + "-child"}},
              "data": {{"size": str(spec["size"])}}}}
    kopf.adopt(child)
    kubernetes.config.load_kube_config()
    kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, child)
    kopf.info(body, reason="ChildCreated", message="child " + name + "-child created")
    return {{"child": name + "-child"}}


@kopf.on.delete("{group}", "v1", "{plural}")
def delete(name, logger, **_):
    logger.info("deleting %s", name)
"""


def test_real_kopf_operator_reconciles_against_this_api(kube_api: KubeApi, widgets: Widgets,
                                                        core: client.CoreV1Api, tmp_path: Path) -> None:  # fmt: skip
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR.format(group=GROUP, plural=widgets.plural))
    ns = kube_api.namespace
    with kopf_operator(kube_api, str(operator), log_file=tmp_path / "kopf.log"):
        widgets.create("res", size=4)

        def reconciled() -> dict[str, Any] | None:
            obj = widgets.get("res")
            return obj if (obj.get("status") or {}).get("create") == {"child": "res-child"} else None

        obj = eventually(reconciled, timeout=30, what="status patched by the handler")
        assert any(f.startswith("kopf.zalando.org") for f in obj["metadata"].get("finalizers", []))
        child = core.read_namespaced_config_map("res-child", ns)
        assert child.data == {"size": "4"}
        assert [(r.kind, r.name, r.uid) for r in child.metadata.owner_references] == \
            [(widgets.kind, "res", obj["metadata"]["uid"])]  # fmt: skip
        if kube_api.stand_in:
            assert kube_api.drop_watches(abrupt=True) >= 1  # kopf must reconnect and still see the deletion
        eventually(lambda: [e for e in core.list_namespaced_event(ns).items if e.reason == "ChildCreated"],
                   timeout=30, what="event posted")  # fmt: skip
        widgets.custom.delete_namespaced_custom_object(GROUP, "v1", ns, widgets.plural, "res")

        def removed() -> bool:
            try:
                widgets.get("res")
            except ApiException as e:
                return e.status == 404
            return False

        eventually(removed, timeout=30, what="finalizer removed by kopf and object deleted")
        eventually(lambda: "res-child" not in {c.metadata.name for c in core.list_namespaced_config_map(ns).items},
                   timeout=30, what="child garbage-collected")  # fmt: skip
    log = (tmp_path / "kopf.log").read_text()
    assert "Traceback" not in log, log[-3000:]
