"""What a user does to a running job, with the operator in-cluster from its chart: suspend it (as Kueue would) and
resume it, which continues from the checkpoint written on suspension; and the cluster CLI, `finetune submit`,
`get`, `logs` and `delete`, on a job whose dataset is wrong, which fails once with the trainer's reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune_operator import cli
from tests.cluster.conftest import ATTEMPT, get_json, resumed_at, step, upload, uploaded_job, wait_status, warnings
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow


def events(kube: KubeApi, name: str) -> list[str]:
    listed = get_json(kube, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in sorted(listed, key=lambda e: int(e["metadata"]["resourceVersion"]))]  # created order


def test_a_suspended_job_stops_its_workers_and_resumes_from_its_last_checkpoint(
    release: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    kube = release
    job = uploaded_job("pausable", s3_server, tiny_bert, sentiment_csv)
    job["spec"]["hyperparameters"].update(maxSteps=160, evalSteps=80)
    job["spec"]["checkpoint"]["everySteps"] = 20
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    before = wait_status(kube, "pausable", lambda s: s.get("phase") == "Running" and step(s) >= 25, 300,
                         "training past the first checkpoint", kube_nodes)  # fmt: skip

    kube.kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_status(kube, "pausable", lambda s: s.get("phase") == "Suspended", 120, "Suspended", kube_nodes)
    eventually(lambda: not [p for p in get_json(kube, "pods", "-l", "finetune.dev/job=pausable")["items"]
                            if p["status"]["phase"] in ("Pending", "Running")],
               timeout=120, interval=1, what="the workers stopped")  # fmt: skip
    # The workers saved on SIGTERM: the newest committed checkpoint is at or past the step seen before.
    saved = int((suspended.get("lastCheckpoint") or {}).get("step") or 0)
    assert saved >= 20, suspended

    kube.kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_status(kube, "pausable", lambda s: s.get("attempt") == 2 and s.get("phase") in ("Pending", "Running"), 120,
                "resumed as attempt 2", kube_nodes)  # fmt: skip
    assert resumed_at(kube, 2) >= max(saved, step(before) // 20 * 20)

    final = wait_status(kube, "pausable", lambda s: s.get("phase") in ("Succeeded", "Failed"), 600, "finished",
                        kube_nodes)  # fmt: skip
    assert final["phase"] == "Succeeded", final
    assert final.get("restarts", 0) == 0 and final["attempt"] == 2, final  # a suspension is no failure
    reasons = events(kube, "pausable")
    assert reasons.index("Suspended") < reasons.index("Resumed"), reasons
    assert not warnings(kube, "pausable"), warnings(kube, "pausable")


def test_the_cli_submits_gets_shows_logs_and_deletes_a_job_that_fails_once_on_bad_data(
    release: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
):  # fmt: skip
    kube = release
    bad = tmp_path / "bad.csv"
    bad.write_text("review,label\ngreat film,positive\nawful film,negative\n" * 20)
    job = uploaded_job("badinput", s3_server, tiny_bert, sentiment_csv)
    job["spec"]["dataset"] = {"train": upload(s3_server, bad, "data/bad.csv")}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    where = ["--kubeconfig", str(kube.kubeconfig), "--namespace", kube.namespace]
    assert cli.main(["submit", str(job_file), *where]) == 0
    assert f"finetunejob.finetune.dev/badinput created in {kube.namespace}" in capsys.readouterr().out

    final = wait_status(kube, "badinput", lambda s: s.get("phase") in ("Failed", "Succeeded"), 300, "finished",
                        kube_nodes)  # fmt: skip
    assert final["phase"] == "Failed" and final["reason"] == "InvalidInput", final
    assert "text" in final["message"] and "review" in final["message"], final["message"]
    assert final.get("restarts", 0) == 0 and final["attempt"] == 1, final
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["message"] == final["message"]
    pods = get_json(kube, "pods", "-l", "finetune.dev/job=badinput")["items"]
    attempts = {p["metadata"]["labels"][ATTEMPT] for p in pods}
    assert attempts == {"1"}, attempts  # failed once: no second attempt

    assert cli.main(["get", *where]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "ACCURACY", "RESTARTS", "MODEL"]
    assert table[1].split() == ["badinput", "Failed", "-", "-", "0", "-"]
    assert cli.main(["logs", "badinput", "--rank", "0", *where]) == 0
    assert "error: " in capsys.readouterr().out
    assert cli.main(["delete", "badinput", *where]) == 0
    eventually(lambda: kube.kubectl("get", "ftj", "badinput", check=False).returncode != 0, timeout=60,
               what="the job deleted")  # fmt: skip
