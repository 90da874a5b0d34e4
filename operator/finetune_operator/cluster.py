"""`finetune submit|get|logs|delete`: the cluster backend of the CLI (the cluster in KUBECONFIG).

finetune submit job.yaml            # the same file `finetune run job.yaml` trains locally
finetune get [NAME]                 # name, phase, progress, accuracy, restarts, model
finetune logs NAME [--rank N]       # the newest attempt's worker N (default 0)
finetune delete NAME
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from finetune_operator import api, names
from finetune_trainer.errors import InputError


def add_arguments(parser: argparse.ArgumentParser, command_name: str) -> None:
    parser.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig context's, else default)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    if command_name == "submit":
        parser.add_argument("job", help="FineTuneJob YAML file")
        parser.add_argument("--name", help="override metadata.name")
    elif command_name == "get":
        parser.add_argument("name", nargs="?", help="one job (default: all in the namespace)")
        parser.add_argument("--output", "-o", choices=("table", "yaml"), default="table")
    elif command_name == "logs":
        parser.add_argument("name", help="job name")
        parser.add_argument("--rank", type=int, default=0, help="worker pod index (default 0)")
        parser.add_argument("--export", action="store_true", help="the export pod's logs instead")
    elif command_name == "delete":
        parser.add_argument("name", help="job name")


def _clients(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from kubernetes import client

    from finetune_operator.kube import new_client

    api_client, default_ns = new_client(args.kubeconfig)
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), args.namespace or default_ns


def _raw_document(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return next(d for d in yaml.safe_load_all(f) if isinstance(d, dict) and d.get("kind") == api.KIND)


def submit(args: argparse.Namespace) -> int:
    job = api.load_job_file(args.job)  # every spec error, named by field, before anything is sent
    body = _raw_document(args.job)
    body.setdefault("apiVersion", api.API_VERSION)
    meta = body.setdefault("metadata", {})
    if args.name:
        meta["name"] = job.metadata.name = args.name
    errors = names.name_errors(job.metadata.name, job.spec.resources.nodes)
    if errors:
        raise InputError("\n".join(errors))
    custom, _, namespace = _clients(args)
    meta["namespace"] = namespace
    from kubernetes.client.exceptions import ApiException

    try:
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)
    except ApiException as e:
        print(f"error: cannot create {api.KIND} {namespace}/{meta['name']}: {_reason(e)}", file=sys.stderr)
        return 1
    print(f"{api.SINGULAR}.{api.GROUP}/{meta['name']} created in {namespace}")
    return 0


def _reason(e: Any) -> str:
    import json

    try:
        return json.loads(e.body).get("message") or e.reason
    except (TypeError, ValueError):
        return f"{e.status} {e.reason}"


def row(obj: dict[str, Any]) -> list[str]:
    """One line of `finetune get`: name, phase, progress, accuracy, restarts, model."""
    status = obj.get("status") or {}
    progress = (status.get("progress") or {}).get("percent")
    accuracy = (status.get("metrics") or {}).get("accuracy")
    model = status.get("model") or {}
    return [
        obj["metadata"]["name"],
        status.get("phase") or "Pending",
        f"{progress:.0f}%" if isinstance(progress, int | float) else "-",
        f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
        str(status.get("restarts") or 0),
        f"{model['name']}:{model.get('version')}" if model.get("name") else "-",
    ]


def table(rows: list[list[str]]) -> str:
    header = ["NAME", "PHASE", "PROGRESS", "ACCURACY", "RESTARTS", "MODEL"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def get(args: argparse.Namespace) -> int:
    custom, _, namespace = _clients(args)
    from kubernetes.client.exceptions import ApiException

    try:
        if args.name:
            items = [custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, args.name)]
        else:
            items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
    except ApiException as e:
        print(f"error: {_reason(e)}", file=sys.stderr)
        return 1
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(items, sort_keys=False))
    elif items:
        print(table([row(o) for o in sorted(items, key=lambda o: o["metadata"]["name"])]))
    else:
        print(f"no {api.PLURAL} in {namespace}", file=sys.stderr)
    return 0


def logs(args: argparse.Namespace) -> int:
    _, core, namespace = _clients(args)
    component = names.EXPORTER if args.export else names.TRAINER
    selector = f"{names.JOB_LABEL}={args.name},{names.COMPONENT_LABEL}={component}"
    if not args.export:
        selector += f",{names.INDEX_LABEL}={args.rank}"  # the Job controller labels each pod with its index
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    if not pods:
        print(f"error: no {component} pod of {namespace}/{args.name}" + ("" if args.export else f" rank {args.rank}"),
              file=sys.stderr)  # fmt: skip
        return 1

    def newest(pod: Any) -> int:
        lbl = pod.metadata.labels or {}
        return int(lbl.get(names.EXPORT_LABEL if args.export else names.ATTEMPT_LABEL, 0))

    pod = max(pods, key=newest)
    containers = ["export", "publish"] if args.export else ["trainer"]
    for container in containers:
        text = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def delete(args: argparse.Namespace) -> int:
    custom, _, namespace = _clients(args)
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, args.name)
    except ApiException as e:
        print(f"error: {_reason(e)}", file=sys.stderr)
        return 1
    print(f"{api.SINGULAR}.{api.GROUP}/{args.name} deleted from {namespace}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"submit": submit, "get": get, "logs": logs, "delete": delete}[args.command](args)
