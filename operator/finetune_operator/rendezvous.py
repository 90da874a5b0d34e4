"""The worker pods' command: ``finetune_trainer.launch`` in front of torchrun (pure, no API calls).

Every pod of a worker group's Indexed Job runs the same command; the launcher reads the pod's index
(``JOB_COMPLETION_INDEX``), lets index 0 host the c10d rendezvous store and has the others wait for it, with the
timeouts of ``spec.resources.rendezvous``. Node 0 is reached as ``<workload>-0.<service>``
(names.rendezvous_endpoint): an Indexed Job's pod ``i`` has the hostname ``<workload>-<i>`` under the headless
Service named by its ``subdomain``.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api
from finetune_operator.settings import Settings
from finetune_trainer import contract

# The pod's IP, from the downward API: torchrun's --local-addr, so the workers' MASTER_ADDR needs no DNS.
POD_IP_ENV: dict[str, Any] = {"name": contract.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def launcher_command(job: api.FineTuneJob, settings: Settings, *, endpoint: str, rdzv_id: str,
                     config: str) -> list[str]:  # fmt: skip
    """A worker pod's command: the launcher's options, then torchrun's own and the trainer's."""
    res = job.spec.resources
    return [
        settings.trainer_python,
        "-m",
        "finetune_trainer.launch",
        f"--nnodes={res.nodes}",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--join-timeout={res.rendezvous.join_timeout_seconds}",
        f"--read-timeout={res.rendezvous.read_timeout_seconds}",
        "--",
        f"--nproc-per-node={res.procs}",
        f"--max-restarts={settings.torchrun_max_restarts}",
        "-m",
        "finetune_trainer",
        "train",
        "--config",
        config,
    ]
