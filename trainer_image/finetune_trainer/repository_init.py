"""``python -m finetune_trainer init-repository URL``: make a Triton model repository exist before Triton starts.

Triton refuses to start over an S3 path that holds no object ("repository path is not a valid directory"), and a
new, empty bucket prefix is such a path. This writes the folder marker ``<prefix>/`` (what S3 consoles write for
a new folder) when nothing is under the prefix yet, and changes nothing otherwise; a local repository is created
as a folder. The chart's Triton runs it as an init container with Triton's own S3 settings.
"""

from __future__ import annotations

import argparse
import sys

from finetune_trainer import contract
from finetune_trainer.storage import LocalStorage, StorageError, open_storage
from finetune_trainer.storage_s3 import S3Storage


def init_repository(url: str) -> bool:
    """Make the repository at ``url`` exist; True when something was created."""
    storage = open_storage(url)
    if isinstance(storage, LocalStorage):
        created = not storage.root.is_dir()
        storage.root.mkdir(parents=True, exist_ok=True)
        return created
    if not isinstance(storage, S3Storage) or not storage.prefix or storage.list(""):
        return False  # there already, or a bucket's root (which exists with the bucket)
    storage.put_folder_marker()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_trainer init-repository", description=__doc__)
    parser.add_argument("repository", help="s3://bucket/prefix or a folder")
    args = parser.parse_args(argv)
    try:
        created = init_repository(args.repository)
    except StorageError as e:
        return contract.fail(f"model repository {args.repository}: {e}", contract.EXIT_STORAGE)
    print(f"model repository {args.repository}: {'created' if created else 'exists'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
