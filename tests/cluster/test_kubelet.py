"""The process-runtime kubelet on the real control plane, checked with kubectl as a user checks a node: Ready
Nodes with capacity and fresh Leases; pods the scheduler binds run in namespaces of their own, reach the API with
their projected service-account token, find each other by headless-Service and Service names, get their volumes,
env and termination messages, restart by policy, and wait with a kubelet's reasons when they cannot start."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import get_json
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool

pytestmark = pytest.mark.slow
IMAGE = "ghcr.io/finetune-operator/trainer:test"


@pytest.fixture
def kube(cluster_api: KubeApi, kube_nodes: NodePool | None) -> KubeApi:
    if kube_nodes is None:
        pytest.skip("these tests check the process-runtime kubelet; a real cluster has its own")
    return cluster_api


def apply(kube: KubeApi, *objects: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def python_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": IMAGE, "command": ["python", "-c", textwrap.dedent(script)],
                 **spec.pop("container", {})}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": spec.pop("labels", {})},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}  # fmt: skip


def phase(kube: KubeApi, name: str, *wanted: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        pod = get_json(kube, "pod", name)
        return pod if pod.get("status", {}).get("phase") in wanted else None

    return eventually(done, timeout=timeout, interval=0.3, what=f"pod {name} {'/'.join(wanted)}")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def waiting_reason(kube: KubeApi, name: str) -> str:
    statuses = get_json(kube, "pod", name).get("status", {}).get("containerStatuses") or [{}]
    return statuses[0].get("state", {}).get("waiting", {}).get("reason", "")


def test_nodes_are_ready_with_capacity_and_renew_their_leases(kube: KubeApi):
    nodes = {n["metadata"]["name"]: n for n in get_json(kube, "nodes")["items"]}
    for name in ("node-a", "node-b"):
        ready = next(c for c in nodes[name]["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
        assert nodes[name]["status"]["allocatable"]["cpu"] == "8"
    first = get_json(kube, "lease", "node-a", "-n", "kube-node-lease")["spec"]["renewTime"]
    eventually(lambda: get_json(kube, "lease", "node-a", "-n", "kube-node-lease")["spec"]["renewTime"] != first,
               timeout=15, interval=0.5, what="the node's Lease renewed")  # fmt: skip


def test_a_pod_runs_isolated_with_its_token_volumes_env_and_termination_message(kube: KubeApi):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}}
    script = """
        import json, os, socket, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
        url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/apis"
        token = open(f"{sa}/token").read()
        review = {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1"}
        req = urllib.request.Request(url.replace("/apis", "/apis/authentication.k8s.io/v1/selfsubjectreviews"),
                                     data=json.dumps(review).encode(), method="POST",
                                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        user = json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]["username"]
        facts = {"pid": os.getpid(), "hostname": socket.gethostname(), "uid": os.getuid(), "user": user,
                 "ip": socket.gethostbyname(socket.gethostname()), "mode": open("/etc/settings/mode").read(),
                 "secret": os.environ["KEY"], "pod": os.environ["POD"], "namespace": open(f"{sa}/namespace").read(),
                 "work": os.listdir("/workspace")}
        open("/workspace/x", "w").write("private to the pod")
        open("/dev/termination-log", "w").write(json.dumps(facts))
    """
    pod = python_pod("isolated", script, container={
        "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"},
                         {"name": "work", "mountPath": "/workspace"}],
    }, volumes=[{"name": "settings", "configMap": {"name": "settings"}}, {"name": "work", "emptyDir": {}}])  # fmt: skip
    apply(kube, config, secret, pod)

    got = phase(kube, "isolated", "Succeeded", "Failed")
    state = terminated(got)
    assert state["exitCode"] == 0, state
    facts = json.loads(state["message"])
    assert facts["pid"] == 1 and facts["hostname"] == "isolated" and facts["uid"] == 10001  # the image's USER
    assert facts["ip"] == got["status"]["podIP"] and facts["ip"].startswith("10.244.")
    assert facts["user"] == f"system:serviceaccount:{kube.namespace}:default"
    assert facts["namespace"] == kube.namespace and facts["pod"] == "isolated"
    assert (facts["mode"], facts["secret"], facts["work"]) == ("fast", "s3cr3t", [])
    assert got["spec"]["nodeName"] in ("node-a", "node-b")


def test_pods_find_each_other_by_headless_and_cluster_ip_service_names(kube: KubeApi):
    server = """
        import http.server
        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"hello from server")
        http.server.HTTPServer(("0.0.0.0", 8080), Hello).serve_forever()
    """
    client = """
        import os, time, urllib.request
        for attempt in range(100):
            try:
                a = urllib.request.urlopen("http://server-0.peers:8080/", timeout=2).read().decode()
                b = urllib.request.urlopen(f"http://web.{os.environ['NS']}.svc:80/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.3)
        open("/dev/termination-log", "w").write(a + " | " + b)
    """
    labels = {"app": "server"}
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    apply(kube,
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
           "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8080}]}},
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}},
          python_pod("server-0", server, labels=labels, hostname="server-0", subdomain="peers",
                     container={"readinessProbe": probe}),
          python_pod("client", client, container={"env": [{"name": "NS", "value": kube.namespace}]}))  # fmt: skip

    ready = eventually(
        lambda: (
            next(
                (
                    c["status"]
                    for c in get_json(kube, "pod", "server-0")["status"].get("conditions", [])
                    if c["type"] == "Ready"
                ),
                None,
            )
            == "True"
        ),
        timeout=60,
        what="server Ready by its probe",
    )
    assert ready
    got = phase(kube, "client", "Succeeded", "Failed")
    assert terminated(got)["message"] == "hello from server | hello from server"


def test_restart_policy_restarts_a_failed_container_and_counts_it(kube: KubeApi):
    script = """
        import os, sys
        if not os.path.exists("/state/tried"):
            open("/state/tried", "w").write("1")
            sys.exit(3)
    """
    apply(kube, python_pod("flaky", script, restartPolicy="OnFailure",
                           container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
                           volumes=[{"name": "state", "emptyDir": {}}]))  # fmt: skip
    got = phase(kube, "flaky", "Succeeded", "Failed", timeout=120)
    status = got["status"]["containerStatuses"][0]
    assert got["status"]["phase"] == "Succeeded" and status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3


def test_an_init_container_runs_once_before_the_main_one_under_restart_policy_always(kube: KubeApi):
    """As a Deployment's pod: the init container's exit 0 completes it; it is not restarted with the pod's
    policy, and the main container starts after it."""
    init = {"name": "init", "image": IMAGE, "command": ["python", "-c", "open('/state/ready', 'w').write('1')"],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}]}  # fmt: skip
    script = """
        import os, time
        assert os.path.exists("/state/ready")
        time.sleep(600)
    """
    apply(kube, python_pod("initialized", script, restartPolicy="Always", initContainers=[init],
                           container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
                           volumes=[{"name": "state", "emptyDir": {}}]))  # fmt: skip
    running = phase(kube, "initialized", "Running")
    time.sleep(3)  # a restarted init container would show by now
    (status,) = get_json(kube, "pod", "initialized")["status"]["initContainerStatuses"]
    assert status["restartCount"] == 0 and status["state"]["terminated"]["reason"] == "Completed", status
    assert running["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_volume_over_the_images_folder_leaves_the_image_runnable(kube: KubeApi):
    """A real image keeps its Python in /opt or /usr; here it is a venv on a node path, which a pod's volume may
    cover (the chart's emptyDir at /tmp, for a checkout under /tmp). The image's files stay visible, the volume
    is still the volume around them."""
    venv = Path(sys.prefix)
    covered = str(venv.parent)
    script = f"""
        import os, sys
        assert sys.prefix == {str(venv)!r}, sys.prefix
        import finetune_trainer  # installed editable: its sources are under the covered folder too
        open({covered!r} + "/written", "w").write("1")  # the volume, writable
        print(sorted(os.listdir({covered!r})))
    """
    apply(kube, python_pod("covered", script, securityContext={"runAsUser": 10001},
                           container={"volumeMounts": [{"name": "scratch", "mountPath": covered}]},
                           volumes=[{"name": "scratch", "emptyDir": {}}]))  # fmt: skip
    got = phase(kube, "covered", "Succeeded", "Failed")
    log = kube.kubectl("logs", "covered").stdout
    assert got["status"]["phase"] == "Succeeded", (terminated(got), log)
    assert "written" in log and venv.name in log, log  # the emptyDir, with the image's folder bound into it


def test_pods_that_cannot_start_wait_with_the_kubelets_reason(kube: KubeApi):
    apply(kube, python_pod("no-image", "", container={"image": "registry.example/missing:1"}),
          python_pod("no-secret", "", container={
              "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}))  # fmt: skip
    eventually(lambda: waiting_reason(kube, "no-image") in ("ErrImagePull", "ImagePullBackOff"), timeout=60,
               interval=0.3, what="ErrImagePull")  # fmt: skip
    eventually(lambda: waiting_reason(kube, "no-secret") == "CreateContainerConfigError", timeout=60,
               interval=0.3, what="CreateContainerConfigError")  # fmt: skip
    message = get_json(kube, "pod", "no-secret")["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert message == 'secret "absent" not found'


def test_deleting_a_pod_sends_sigterm_and_waits_for_the_grace_period(kube: KubeApi):
    script = """
        import signal, sys, time
        def stop(*_):
            print("stopping on SIGTERM", flush=True); time.sleep(1); sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("running", flush=True)
        while True:
            time.sleep(0.1)
    """
    apply(kube, python_pod("graceful", script, terminationGracePeriodSeconds=20))
    phase(kube, "graceful", "Running")
    logs = eventually(lambda: kube.kubectl("logs", "graceful").stdout, timeout=30, what="kubectl logs")
    assert logs == "running\n"
    started = time.monotonic()
    kube.kubectl("delete", "pod", "graceful", "--wait=true", timeout=60)
    took = time.monotonic() - started
    assert 1 <= took < 15, took  # the handler's second, not the 20 s grace period
    assert kube.kubectl("get", "pod", "graceful", check=False).returncode != 0


def events(kube: KubeApi, pod: str) -> list[str]:
    """The pod's event reasons in the order they were created: timestamps have whole seconds, and two events of
    one second would sort by name; the resourceVersion etcd gave each create is its order."""
    items = get_json(kube, "events", "--field-selector", f"involvedObject.name={pod}")["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_slow_image_pull_keeps_the_containers_creating_while_the_pod_has_its_ip(kube: KubeApi,
                                                                                  kube_nodes: NodePool):  # fmt: skip
    labels = {"pull": "slow"}
    with kube_nodes.delays.pull(labels, 8):
        apply(kube, python_pod("slow-pull", "print('started')", labels=labels), python_pod("prompt", ""))
        pulling = eventually(lambda: get_json(kube, "pod", "slow-pull").get("status", {}).get("podIP"), timeout=60,
                             interval=0.3, what="slow-pull has its IP")  # fmt: skip
        assert pulling.startswith("10.244.")
        assert waiting_reason(kube, "slow-pull") == "ContainerCreating"
        assert "Pulling" in eventually(lambda: events(kube, "slow-pull"), timeout=10, what="a Pulling event")
        prompt = phase(kube, "prompt", "Succeeded")  # a pod the rule does not select starts at once
        assert get_json(kube, "pod", "slow-pull")["status"]["phase"] == "Pending"
        got = phase(kube, "slow-pull", "Succeeded", "Failed", timeout=90)
    assert got["status"]["phase"] == "Succeeded", got["status"]
    waited = timestamp(terminated(got)["startedAt"]) - timestamp(got["status"]["startTime"])
    assert waited.total_seconds() >= 8, waited
    assert timestamp(terminated(prompt)["startedAt"]) < timestamp(terminated(got)["startedAt"])
    reasons = events(kube, "slow-pull")
    assert reasons.index("Pulling") < reasons.index("Pulled") < reasons.index("Started"), reasons


def test_a_late_dns_record_names_the_pod_only_after_the_delay(kube: KubeApi, kube_nodes: NodePool):
    labels = {"dns": "late"}
    client = """
        import json, socket, time
        start, misses = time.monotonic(), 0
        while True:
            try:
                ip = socket.gethostbyname("late-0.late-peers")
                break
            except OSError:
                misses += 1
                time.sleep(0.2)
        facts = {"ip": ip, "misses": misses, "waited": time.monotonic() - start}
        open("/dev/termination-log", "w").write(json.dumps(facts))
    """
    with kube_nodes.delays.dns(labels, 12):
        apply(kube,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late-peers"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                        "ports": [{"port": 8080}]}},
              python_pod("late-0", "import time; time.sleep(300)", labels=labels, hostname="late-0",
                         subdomain="late-peers"))  # fmt: skip
        server_ip = eventually(lambda: get_json(kube, "pod", "late-0").get("status", {}).get("podIP"), timeout=60,
                               interval=0.2, what="late-0 has its IP")  # fmt: skip
        has_ip = time.monotonic()
        apply(kube, python_pod("client", client))
        got = phase(kube, "client", "Succeeded", "Failed", timeout=90)
        resolved = time.monotonic()
    facts = json.loads(terminated(got)["message"])
    assert facts["ip"] == server_ip and facts["misses"] > 0, facts
    assert resolved - has_ip >= 10, (resolved - has_ip, facts)  # the 12 s, less the view's one-second polls
