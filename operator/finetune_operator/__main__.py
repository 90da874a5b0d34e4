"""`python -m finetune_operator` (and `finetune operator`): run the kopf operator.

    python -m finetune_operator                        # namespaces from FINETUNE_NAMESPACES, else all
    python -m finetune_operator --namespace ml-team    # one namespace (repeatable)

Equivalent to `kopf run -m finetune_operator.handlers --standalone ...`; every other setting comes from the
environment (finetune_operator.settings).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", action="append", default=[], help="namespace to serve (repeatable)")
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace")
    parser.add_argument("--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every handler and API call")
    parser.add_argument("--log-format", choices=("plain", "full", "json"), default="full")


def kopf_argv(args: argparse.Namespace, namespaces: tuple[str, ...], peering: str | None) -> list[str]:
    """The `kopf run` command line for these arguments and settings."""
    argv = ["run", "-m", "finetune_operator.handlers", f"--log-format={args.log_format}"]
    argv += [f"--peering={peering}"] if peering else ["--standalone"]
    chosen = tuple(args.namespace) or (() if args.all_namespaces else namespaces)
    argv += [f"--namespace={ns}" for ns in chosen] if chosen else ["--all-namespaces"]
    if args.liveness:
        argv.append(f"--liveness={args.liveness}")
    if args.verbose:
        argv.append("--verbose")
    return argv


def run(args: argparse.Namespace) -> int:
    from kopf.cli import main as kopf_main

    from finetune_operator import settings

    if args.namespace:
        # The handlers read their settings from the environment: named namespaces there too, so that kopf's
        # cluster-wide scans (which a namespaced Role refuses) are switched off as with FINETUNE_NAMESPACES.
        os.environ["FINETUNE_NAMESPACES"] = ",".join(args.namespace)
    cfg = settings.current()
    try:
        kopf_main.main(args=kopf_argv(args, cfg.namespaces, cfg.peering), prog_name="finetune operator")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_operator", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
