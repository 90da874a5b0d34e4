"""`python -m finetune_trainer train --config job.json`: one worker of a fine-tuning run.

    # one process
    python -m finetune_trainer train --config job.json
    # one node, 2 processes (gloo on CPU, NCCL on GPUs)
    torchrun --standalone --nproc-per-node=2 -m finetune_trainer train --config job.json
    # 2 nodes x 4 GPUs, run on each node
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        --rdzv-id=JOB -m finetune_trainer train --config job.json

Exit codes (finetune_trainer.contract): 0 done, 2 bad input (one line on stderr, no traceback; retrying cannot
help), 3 storage unreachable or refused (one line; a retry may help once it is fixed), 143 stopped by SIGTERM
after a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from finetune_trainer import contract
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import InputError
from finetune_trainer.storage import StorageError


def setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format="%(asctime)s %(levelname)s rank=" + rank + " %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for noisy in ("datasets", "httpx", "urllib3", "botocore", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def report_error(error: Exception, exit_code: int) -> None:
    """One ``error:`` line on stderr, also in the container's termination message with the exit code for the
    operator to read (torchrun itself exits 1 whatever its workers' codes, so the pod's exit code cannot say why).

    Every rank reports: the first to fail may be any of them, and torchrun stops the others (rank 0 included)
    before they reach this point. Ranks of one pod share the file; they fail on the same input with the same line.
    """
    contract.fail(error, exit_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_trainer train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TrainerConfig JSON written by the operator or `finetune run`")
    args = parser.parse_args(argv)
    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = TrainerConfig.from_file(args.config)
        from finetune_trainer.loop import fit
        from finetune_trainer.run_setup import Preempted

        fit(cfg)
    except InputError as e:
        report_error(e, contract.EXIT_BAD_INPUT)
        return contract.EXIT_BAD_INPUT
    except StorageError as e:
        report_error(e, contract.EXIT_STORAGE)
        return contract.EXIT_STORAGE
    except Preempted as e:
        logging.getLogger("finetune_trainer").warning("%s", e)
        return contract.EXIT_PREEMPTED
    except Exception as e:
        # A crash (CUDA out of memory, a collective that timed out, a bug): the traceback goes to the log as
        # usual, and its last line to the termination message, where the operator classifies it.
        contract.fail(f"{type(e).__name__}: {e}", contract.EXIT_FAILED, first=True)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
