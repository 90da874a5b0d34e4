"""Entry points of the trainer image.

    torchrun --nproc-per-node=2 -m finetune_trainer train --config job.json
    python -m finetune_trainer export --model RUN/model --out RUN/export
    python -m finetune_trainer publish --export RUN/export --repository s3://bucket/models --name my-model
    python -m finetune_trainer combine --member RUN/members/0/export --member ... --out RUN/export
    python -m finetune_trainer init-repository s3://bucket/models

Each subcommand lives in its own module and exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": "finetune_trainer.train",
    "export": "finetune_trainer.export",
    "publish": "finetune_trainer.publish",
    "combine": "finetune_trainer.ensemble",
    "init-repository": "finetune_trainer.repository_init",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m finetune_trainer {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: see dist.exit_without_finalizing
        from finetune_trainer.dist import exit_without_finalizing

        exit_without_finalizing(code)
    sys.exit(code)
