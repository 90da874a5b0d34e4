"""`finetune run` of a job with ``spec.ensemble``: the members train one after another, each in its own run
folder ``RUN/members/<index>`` (its own config, checkpoints and model, so each resumes on its own), then each
is exported (ONNX, parity checked), the exports are combined into ``RUN/export`` and evaluated on the
held-out splits (``RUN/metrics.json``), and with serving that export is published as one model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from finetune_operator import api, local
from finetune_operator.ensemble_spec import Member
from finetune_operator.ensemble_steps import MEMBERS_DIR, combine_args, member_job, members
from finetune_operator.steps import export_args, publish_args, trainer_config
from finetune_trainer.errors import InputError

GENERIC_LABEL = "LABEL_"


def member_run(run: local.LocalRun, member: Member) -> local.LocalRun:
    return local.LocalRun(run.dir / MEMBERS_DIR / str(member.index))


def member_field(job: api.FineTuneJob, member: Member) -> str:
    ens = job.spec.ensemble
    assert ens is not None
    return f"spec.ensemble.members[{member.index}].model" if ens.members is not None else "spec.model"


def check_members(job: api.FineTuneJob, run: local.LocalRun) -> None:
    """Every member's inputs, and that one tokenizer and one label set serve them all, before any trains.

    Raises:
        InputError: naming the member's field and what differs.
    """
    from finetune_trainer.model import load_tokenizer
    from finetune_trainer.sources import model_location

    cache = run.dir / ".cache"
    seed = job.spec.hyperparameters.seed
    cfgs = [trainer_config(member_job(job, m), str(member_run(run, m).dir), split_seed=seed) for m in members(job)]
    for cfg in cfgs:
        local.preflight(cfg)
    ref = load_tokenizer(job.spec.model, cache).backend_tokenizer.to_str()
    labels = _job_labels(cfgs[0], cache)
    for m in members(job):
        if m.model == job.spec.model:
            continue
        field = member_field(job, m)
        if load_tokenizer(m.model, cache).backend_tokenizer.to_str() != ref:
            raise InputError(f"{field}: {m.model.name} has a different tokenizer from spec.model {job.spec.model.name}"
                             "; one served tokenizer encodes for every member")
        head = _head_labels(Path(model_location(m.model.name, field, cache)))
        if head is not None and labels is not None and head != labels:
            raise InputError(f"{field}: {m.model.name} is a classifier for labels {head}, but the job's data has "
                             f"{labels}; every member must predict the same labels")


def _job_labels(cfg, cache: Path) -> list[str] | None:
    from finetune_trainer.config import TaskType
    from finetune_trainer.roles import load_roles

    if cfg.task.type == TaskType.REGRESSION:
        return None
    return load_roles(cfg.dataset, cfg.task, cfg.hold_out_seed, cache).label_names


def _head_labels(folder: Path) -> list[str] | None:
    """The label names a classifier checkpoint was trained for (None for a bare encoder or generic names)."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        return None
    id2label = json.loads(path.read_text(encoding="utf-8")).get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    return None if all(n.startswith(GENERIC_LABEL) for n in names) else names


def run_ensemble(job: api.FineTuneJob, run: local.LocalRun, *, nproc: int | None = None, max_restarts: int = 0,
                 metrics_port: int | None = None) -> int:  # fmt: skip
    """Train, export and combine every member (and publish, with serving); returns the first non-zero exit.

    Raises:
        InputError: a member's data or model cannot be used (nothing was started).
    """
    run.dir.mkdir(parents=True, exist_ok=True)
    check_members(job, run)
    seed = job.spec.hyperparameters.seed
    trainer = [sys.executable, "-m", "finetune_trainer"]
    for m in members(job):
        mrun = member_run(run, m)
        if not mrun.metrics.exists():  # a finished member is not trained again on --resume
            print(f"finetune: ensemble member {m.index} (seed {m.seed}, {m.model.name}) -> {mrun.dir}",
                  file=sys.stderr, flush=True)
            code = local.launch(member_job(job, m), mrun, nproc=nproc, max_restarts=max_restarts,
                                metrics_port=metrics_port, split_seed=seed)
            if code != 0:
                return code
        code = subprocess.call([*trainer, *export_args(member_job(job, m), str(mrun.model), str(mrun.export))])
        if code != 0:
            return code
    runs = [member_run(run, m) for m in members(job)]
    args = combine_args(job, [str(r.export) for r in runs], str(run.export), config=str(runs[0].config),
                        metrics_to=str(run.dir))
    code = subprocess.call([*trainer, *args])
    if code == 0 and job.spec.serving.enabled:
        local.prepare_repository(job)
        code = subprocess.call([*trainer, *publish_args(job, str(run.export))])
    return code


def summary(run: local.LocalRun) -> str:
    """Where the ensemble's run put things, and its held-out metrics next to each member's."""
    import json

    lines = [f"run:     {run.dir}", f"export:  {run.export}", f"metrics: {run.metrics}"]
    if run.metrics.exists():
        m = json.loads(run.metrics.read_text(encoding="utf-8"))
        for split in ("validation", "test"):
            if split in m:
                rows = [("ensemble", m[split])] + [(f"member {e['index']}", e["metrics"][split]) for e in m["members"]]
                for who, values in rows:
                    head = {k: round(values[k], 4) for k in ("accuracy", "f1_macro", "mse") if k in values}
                    lines.append(f"{split + ':':12} {who:10} {' '.join(f'{k}={v}' for k, v in head.items())}")
    return "\n".join(lines)
