"""`finetune`: run a FineTuneJob here, or submit and follow it on a cluster.

    finetune run examples/finetunejob.yaml          # this machine, torchrun, no cluster
    finetune submit examples/finetunejob.yaml       # the same file, to the cluster in KUBECONFIG
    finetune get [NAME] | logs NAME | delete NAME
    finetune predict --url localhost:8000 "text"    # ask a served model
    finetune serve REPO                             # a local Triton over a model repository
    finetune crd                                    # the CustomResourceDefinition YAML
    finetune operator                               # the kopf operator (as in the Deployment)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_operator.api import FineTuneJob, load_job_file
from finetune_operator.crd import crd_yaml
from finetune_trainer.errors import InputError

if TYPE_CHECKING:
    from finetune_operator import local


def _run(args: argparse.Namespace) -> int:
    from finetune_operator import local

    job = load_job_file(args.job)
    if args.name:
        job.metadata.name = args.name
    hp = job.spec.hyperparameters
    if args.max_steps:
        job.spec.hyperparameters = hp.model_copy(update={"max_steps": args.max_steps})
    run = local.LocalRun(Path(args.resume) if args.resume else local.new_run_dir(Path(args.runs), job.metadata.name))
    print(f"finetune: {job.metadata.name} -> {run.dir}", file=sys.stderr, flush=True)
    if job.spec.ensemble is not None:
        return _run_ensemble(job, run, args)
    code = local.launch(job, run, nproc=args.nproc, max_restarts=args.max_restarts, metrics_port=args.metrics_port)
    if code != 0:
        print(f"finetune: training failed (exit {code}); logs above, config in {run.config}", file=sys.stderr)
        return code
    if job.spec.serving.enabled:
        code = local.export_and_publish(job, run)
        if code != 0:
            print(f"finetune: export or publication failed (exit {code}); the trained model is in {run.model}",
                  file=sys.stderr)
            return code
    print(local.summary(run))
    return 0


def _run_ensemble(job: FineTuneJob, run: local.LocalRun, args: argparse.Namespace) -> int:
    from finetune_operator import ensemble_local

    code = ensemble_local.run_ensemble(job, run, nproc=args.nproc, max_restarts=args.max_restarts,
                                       metrics_port=args.metrics_port)
    if code != 0:
        print(f"finetune: the ensemble failed (exit {code}); logs above, members in {run.dir}", file=sys.stderr)
        return code
    print(ensemble_local.summary(run))
    return 0


def _crd(args: argparse.Namespace) -> int:
    text = crd_yaml()
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run `finetune crd > {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


def _delegate(module: str) -> callable:
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fine-tune a FineTuneJob on this machine with torchrun")
    run.add_argument("job", help="FineTuneJob YAML file")
    run.add_argument("--nproc", type=int, help="processes (default: the spec's nodes x processesPerNode)")
    run.add_argument("--runs", default="runs", help="parent folder of run directories (default: runs)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--name", help="override metadata.name")
    run.add_argument("--max-steps", type=int, help="override hyperparameters.maxSteps")
    run.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a worker failure")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics from rank 0 on this port")
    run.set_defaults(func=_run)

    crd = sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    crd.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated CRD")
    crd.set_defaults(func=_crd)

    for name, module, text in (
        ("submit", "finetune_operator.cluster", "create the FineTuneJob in the cluster"),
        ("get", "finetune_operator.cluster", "show FineTuneJobs and their status"),
        ("logs", "finetune_operator.cluster", "print a job's worker logs"),
        ("delete", "finetune_operator.cluster", "delete a FineTuneJob and its workers"),
        ("predict", "finetune_operator.predict", "classify texts with a model served by Triton"),
        ("serve", "finetune_operator.serve_local", "start a local Triton over a model repository"),
        ("operator", "finetune_operator.__main__", "run the kopf operator"),
    ):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=_delegate(module), command=name)
        try:
            adder = importlib.import_module(module).add_arguments
        except (ImportError, AttributeError):
            continue
        adder(p) if module != "finetune_operator.cluster" else adder(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
