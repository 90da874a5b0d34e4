"""What each step of an ensemble job is given: one member job per member, and the combine command line.
Shared by the local backend (ensemble_local.py) and the cluster's builders (resources.py)."""

from __future__ import annotations

from finetune_operator import api
from finetune_operator.ensemble_spec import Member, resolve
from finetune_trainer.contract import MEMBERS_DIR


def members(job: api.FineTuneJob) -> list[Member]:
    """The job's resolved members (none without ``spec.ensemble``)."""
    spec = job.spec
    if spec.ensemble is None:
        return []
    return resolve(spec.ensemble, spec.hyperparameters.seed, spec.model)


def member_job(job: api.FineTuneJob, member: Member) -> api.FineTuneJob:
    """``job`` as member ``member`` trains it: its seed and model, no ensemble, its own output folder."""
    spec = job.spec
    hp = spec.hyperparameters.model_copy(update={"seed": member.seed})
    update = {"hyperparameters": hp, "model": member.model, "ensemble": None}
    if spec.output:
        update["output"] = member_path(spec.output, member.index)
    return job.model_copy(update={"spec": spec.model_copy(update=update)})


def member_path(root: str, index: int) -> str:
    """Member ``index``'s folder under ``root`` (a path or a URL): ``<root>/members/<index>``."""
    return f"{root.rstrip('/')}/{MEMBERS_DIR}/{index}"


def combine_args(job: api.FineTuneJob, exports: list[str], out: str, *, config: str | None = None,
                 config_json: str | None = None, metrics_to: str | None = None) -> list[str]:  # fmt: skip
    """``python -m finetune_trainer`` arguments that combine the members' exports into one export (``config``:
    a member's trainer config file, or ``config_json`` the same inline, names the held-out splits)."""
    assert job.spec.ensemble is not None
    args = ["combine", *[a for e in exports for a in ("--member", e)], "--out", out]
    args += ["--method", str(job.spec.ensemble.method)]
    if config:
        args += ["--config", config]
    if config_json:
        args += ["--config-json", config_json]
    if metrics_to:
        args += ["--metrics-to", metrics_to]
    return args
