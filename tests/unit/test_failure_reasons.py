"""Failure reasons a user reads in status (OOM killed, CUDA out of memory, collective timeouts, bad input,
image pulls, preemption), each with what to do; the restarts they cause and the steps those redo."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from finetune_operator import failures
from finetune_operator.metrics import OperatorMetrics, phases_of
from finetune_operator.observed import Admission, PodView
from tests.unit.test_lifecycle import SETTINGS, condition, created, jobs_of, running, step, worker

CUDA_OOM = ("error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
            "of 79.1 GiB of which 1.2 GiB is free.\nexitcode: 1")  # fmt: skip
NCCL_TIMEOUT = ("error: DistBackendError: [Rank 1] Watchdog caught collective operation timeout: "
                "WorkNCCL(SeqNum=812, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600013 milliseconds\nexitcode: 1")
GLOO_PEER = "error: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"


@pytest.mark.parametrize(
    ("pod", "reason", "hint"),
    [
        (worker(1, phase="Failed", exit_code=1, message=CUDA_OOM), "CUDAOutOfMemory", "autoBatchSize"),
        (worker(1, phase="Failed", exit_code=1, message=NCCL_TIMEOUT), "CollectiveTimeout", "NCCL_DEBUG=INFO"),
        (worker(1, phase="Failed", exit_code=1, message=GLOO_PEER + "\nexitcode: 1"), "CollectiveTimeout",
         "first error"),
        (worker(1, phase="Failed", exit_code=137, reason="OOMKilled"), "OOMKilled", "spec.resources.memory"),
        (worker(1, phase="Failed", exit_code=1, message="error: rendezvous host job-a1-0.job-workers:29400 not "
                "reachable after 900 s: its name does not resolve yet\nexitcode: 1"), "RendezvousTimeout",
         "joinTimeoutSeconds"),
        (worker(1, phase="Failed", exit_code=1, message="error: s3://ckpt: connection refused\nexitcode: 3"),
         "StorageUnavailable", "credentials Secret"),
        # The trainer's exit code 3 says storage, even where the error reads like a peer's timeout.
        (worker(1, phase="Failed", exit_code=3,
                message="error: EndpointConnectionError: s3://ckpt: Connection reset by peer\nexitcode: 3"),
         "StorageUnavailable", "credentials Secret"),
    ],
)
def test_a_crash_is_named_and_says_what_to_do(pod, reason: str, hint: str) -> None:
    d = step(running(), [worker(0), pod], at=10)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", reason)
    assert hint in d.status["advice"] and d.status["restarts"] == 1
    event = next(e for e in d.events if e.reason == reason)
    assert event.type == "Warning" and "What to do:" in event.message and hint in event.message
    # Running again: the advice was about the failure, not the job now.
    later = step(d.status, [], at=30)
    again = step(later.status, [worker(0, 2), worker(1, 2)], at=31)
    assert again.status["phase"] == "Running" and "advice" not in again.status


def test_the_rank_that_ran_out_of_memory_is_the_cause_not_the_peer_it_left_waiting() -> None:
    """One rank's CUDA OOM makes the others fail on a collective: the reason is the OOM, whichever pod is first."""
    pods = [worker(0, phase="Failed", exit_code=1, message=NCCL_TIMEOUT),
            worker(1, phase="Failed", exit_code=1, message=CUDA_OOM)]  # fmt: skip
    d = step(running(), pods, at=10)
    assert d.status["reason"] == "CUDAOutOfMemory" and "sentiment-a1-1" in d.status["message"]


def test_the_backoff_limit_keeps_the_advice_of_the_failure_behind_it() -> None:
    status = running()
    status.update(restarts=2, attempt=3)
    pods = [worker(0, 3, phase="Failed", exit_code=1, message=CUDA_OOM), worker(1, 3)]
    d = step(status, pods, at=10)
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert "CUDA out of memory" in d.status["message"] and "autoBatchSize" in d.status["advice"]
    assert condition(d.status, "Failed")["status"] == "True"


def test_bad_input_says_retrying_cannot_help() -> None:
    message = "error: dataset.train: column 'text' not found; columns are [review, label]\nexitcode: 2"
    d = step(running(), [worker(0, phase="Failed", exit_code=2, message=message), worker(1)], at=10)
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "InvalidInput")
    assert "retrying the same input cannot help" in d.status["advice"]


def test_a_bad_spec_names_the_field_and_what_to_do() -> None:
    d = step(None, s={"model": {"name": "bert-base-uncased"}, "dataset": {"train": "s3://d/t.csv"},
                      "resources": {"nodes": 0}})  # fmt: skip
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "InvalidSpec")
    assert "resources.nodes" in d.status["message"] and "fix the field" in d.status["advice"]


@pytest.mark.parametrize(
    ("waiting", "hint"),
    [("ImagePullBackOff", "imagePullSecrets"), ("ErrImagePull", "imagePullSecrets"),
     ("Unschedulable", "no node fits"), ("CreateContainerConfigError", "Secret")],
)  # fmt: skip
def test_a_waiting_pod_says_what_to_do(waiting: str, hint: str) -> None:
    d0 = step(None)
    d = step(d0.status, [worker(0, phase="Pending", waiting=waiting, waiting_message="said by the kubelet"),
                         worker(1, phase="Pending")], at=5)  # fmt: skip
    assert d.status["reason"] == waiting and hint in d.status["advice"]


def test_a_preemption_says_nothing_needs_doing() -> None:
    group = jobs_of([worker(0), worker(1)], suspended=True)
    said = Admission(False, "Preempted", "Preempted to accommodate a workload (UID: 1) due to prioritization",
                     evicted=True)  # fmt: skip
    d = step(running(), [worker(0), worker(1)], at=10, jobs=group, admissions={"sentiment-a1": said})
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "Preempted")
    assert d.status["advice"].startswith("nothing: Kueue gave the quota")


# --- a lost node: the survivors fail first, the lost pods are marked later -------------------------------------


def failed_at(rank: int, second: int, message: str = GLOO_PEER + "\nexitcode: 1") -> PodView:
    """A worker that failed ``second`` seconds into the test (its container's finishedAt)."""
    return worker(rank, phase="Failed", exit_code=1, message=message, finished_at=f"2026-01-01T12:00:{second:02d}Z")


def test_a_lost_node_is_a_disruption_though_the_survivor_fails_first() -> None:
    """Rank 0 loses its peer at once; the node lifecycle controller marks rank 1's pod 20-50 s later."""
    d = step(running(), [failed_at(0, 10), worker(1, node="node-c")], at=12)
    assert d.status["phase"] == "Running" and d.status["restarts"] == 0 and not d.delete
    assert d.requeue is not None and 0 < d.requeue <= 10  # looks again soon, not only at the next event
    lost = worker(1, node="node-c", node_lost=True)
    d = step(d.status, [failed_at(0, 10), lost], at=40)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", "NodeLost")
    assert d.status["restarts"] == 0 and d.status["disruptions"] == 1 and "node-c" in d.status["message"]
    assert d.status["interruptions"][-1]["reason"] == "NodeLost"


def test_a_crash_that_stops_the_whole_group_is_counted_once_every_pod_has_finished() -> None:
    d = step(running(), [failed_at(1, 10, CUDA_OOM), worker(0)], at=11)
    assert d.status["phase"] == "Running" and d.status["restarts"] == 0
    d = step(d.status, [failed_at(1, 10, CUDA_OOM), failed_at(0, 12)], at=13)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", "CUDAOutOfMemory")
    assert d.status["restarts"] == 1 and d.status.get("disruptions", 0) == 0


def test_a_peer_that_neither_stops_nor_is_marked_lost_is_waited_for_only_so_long() -> None:
    grace = SETTINGS.node_loss_grace_seconds
    d = step(running(), [failed_at(0, 10), worker(1)], at=10 + grace - 1)
    assert d.status["phase"] == "Running"
    d = step(d.status, [failed_at(0, 10), worker(1)], at=10 + grace + 1)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", "CollectiveTimeout")
    assert d.status["restarts"] == 1


def test_bad_input_is_not_waited_for() -> None:
    d = step(running(), [failed_at(0, 10, "error: dataset.train: no such file\nexitcode: 2"), worker(1)], at=11)
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "InvalidInput")


def test_every_reason_the_machine_writes_has_advice_or_needs_none() -> None:
    """The reasons of failures.classify all have advice: a new one must be given some."""
    for reason in ("InvalidInput", "OOMKilled", "CUDAOutOfMemory", "CollectiveTimeout", "RendezvousTimeout",
                   "StorageUnavailable", "Killed", "WorkerFailed", "Disrupted", "Evicted", "NodeLost"):  # fmt: skip
        assert failures.advice(reason), reason
    assert failures.advice("Running") is None and failures.advice(None) is None


# --- the last checkpoint and the steps each restart redoes ----------------------------------------------------


def record(step_: int, attempt: int, checkpoint: int | None = None, resumed: int | None = None) -> dict:
    out = {"phase": "training", "step": step_, "totalSteps": 100, "attempt": attempt, "time": 1767268800.0}
    if checkpoint is not None:
        out["checkpoint"] = {"step": checkpoint, "time": 1767268800.0, "uri": f"s3://ckpt/ml/sentiment/uid-1/"
                             f"checkpoint-{checkpoint:08d}"}  # fmt: skip
    if resumed is not None:
        out["resumedFrom"] = resumed
    return out


def test_the_last_checkpoint_is_in_status() -> None:
    d = step(running(), [worker(0), worker(1)], at=6, progress=record(47, 1, checkpoint=40, resumed=0))
    assert d.status["lastCheckpoint"] == {"step": 40, "time": "2026-01-01T12:00:00Z",
                                          "uri": "s3://ckpt/ml/sentiment/uid-1/checkpoint-00000040"}  # fmt: skip
    # A late record of an older checkpoint does not move it back.
    d2 = step(d.status, [worker(0), worker(1)], at=7, progress=record(47, 1, checkpoint=20))
    assert d2.status["lastCheckpoint"]["step"] == 40


def test_a_restart_records_the_steps_it_redoes_once_the_next_attempt_says_where_it_resumed() -> None:
    d = step(running(), [worker(0), worker(1)], at=6, progress=record(47, 1, checkpoint=40, resumed=0))
    evicted = worker(1, phase="Failed", reason="Evicted", message="The node was low on memory.")
    d = step(d.status, [worker(0), evicted], at=10, progress=record(47, 1, checkpoint=40))
    assert d.status["disruptions"] == 1 and d.disrupted and d.status["restarts"] == 0
    (entry,) = d.status["interruptions"]
    assert entry == {"attempt": 1, "reason": "Evicted", "time": "2026-01-01T12:00:10Z", "step": 47,
                     "checkpointStep": 40}  # fmt: skip
    # The old group's last record, read late, moves the step it reached; nothing is counted before the next says.
    d = step(d.status, [], at=11, progress=record(49, 1, checkpoint=40))
    assert "Job/sentiment-a2" in created(d) and d.status["interruptions"][0]["step"] == 49
    assert d.status.get("stepsRedone", 0) == 0 and d.steps_redone == 0
    d = step(d.status, [worker(0, 2), worker(1, 2)], at=20, progress=record(40, 2, checkpoint=40, resumed=40))
    assert d.status["interruptions"][0]["stepsRedone"] == 9 and d.status["stepsRedone"] == 9
    assert d.steps_redone == 9
    # Counted once.
    d = step(d.status, [worker(0, 2), worker(1, 2)], at=21, progress=record(55, 2, checkpoint=50, resumed=40))
    assert d.status["stepsRedone"] == 9 and d.steps_redone == 0 and d.status["lastCheckpoint"]["step"] == 50


def test_a_restart_without_a_checkpoint_redoes_every_step() -> None:
    d = step(running(), [worker(0), worker(1)], at=6, progress=record(12, 1, resumed=0))
    d = step(d.status, [worker(0), worker(1, phase="Failed", exit_code=1, message=NCCL_TIMEOUT)], at=10)
    assert d.status["interruptions"][0] == {"attempt": 1, "reason": "CollectiveTimeout",
                                            "time": "2026-01-01T12:00:10Z", "step": 12, "checkpointStep": 0}
    d = step(d.status, [], at=30)
    d = step(d.status, [worker(0, 2), worker(1, 2)], at=31, progress=record(0, 2, resumed=0))
    assert d.status["stepsRedone"] == 12


def test_operator_metrics_show_the_last_checkpoint_and_the_steps_redone() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    index = {"ml": [("a", "Running", False, 40, 1767268800.0), ("b", "Pending", False, None, None)]}
    metrics.watch_jobs(lambda: phases_of(index))
    metrics.steps_redone.labels("ml", "a").inc(9)
    metrics.disruptions.labels("ml", "a").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_last_checkpoint_step{job="a",namespace="ml"} 40.0' in text
    assert 'finetune_operator_last_checkpoint_timestamp_seconds{job="a",namespace="ml"} 1.7672688e+09' in text
    assert 'job="b"' not in text.split("finetune_operator_last_checkpoint_step")[-1].split("# HELP")[0]
    assert 'finetune_operator_steps_redone_total{job="a",namespace="ml"} 9.0' in text
    assert 'finetune_operator_disruptions_total{job="a",namespace="ml"} 1.0' in text


def test_the_operations_guide_lists_every_reason_with_advice() -> None:
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = guide.split("## Failure reasons and what to do")[1].split("\n## ")[0]
    missing = [reason for reason in failures.ADVICE if f"`{reason}`" not in section]
    assert not missing, f"docs/operations.md, 'Failure reasons and what to do', lacks {missing}"
