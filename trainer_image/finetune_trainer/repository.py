"""A Triton model repository on storage as the publisher reads it (publish.py): reachable or not, its version
folders and claims, the configs it serves, the version an idempotency key already claimed, and whether a new
export fits what is served. The files' layout itself is triton_repo.py's."""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import text_format

from finetune_trainer import triton_repo
from finetune_trainer.errors import PublishError
from finetune_trainer.storage import LocalStorage, NotFoundError, Storage, StorageError, open_storage

CLAIMS = ".claims"  # <model>/.claims/<version>.json: create-only claims (Triton ignores non-numeric folders)


def versions_in(keys: list[str], model: str) -> set[int]:
    """Numeric version folders of ``model`` among repository keys."""
    found = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == model and parts[1].isdigit():
            found.add(int(parts[1]))
    return found


def claims_in(keys: list[str], model: str) -> set[int]:
    pattern = re.compile(rf"^{re.escape(model)}/{re.escape(CLAIMS)}/(\d+)\.json$")
    return {int(m.group(1)) for k in keys if (m := pattern.match(k))}


def served_config(storage: Storage, key: str) -> Any:
    """The ModelConfig of the config.pbtxt at ``key``, or None where there is none (or it is not one: then the
    model is treated as serving nothing yet, as Triton could not load it either)."""
    if not storage.exists(key):
        return None
    try:
        return triton_repo.parse_config(storage.get_bytes(key).decode())
    except (text_format.ParseError, UnicodeDecodeError):
        return None


def published_under(storage: Storage, name: str, key: str, claimed: set[int], served: list[int]) -> int | None:
    """The newest served version whose claim records idempotency ``key``, or None.

    A claimed version that no config lists was interrupted or rolled back: it does not count, the publication
    is made again under a new number.
    """
    for version in sorted(claimed & set(served), reverse=True):
        try:
            record = json.loads(storage.get_bytes(f"{name}/{CLAIMS}/{version}.json"))
        except (NotFoundError, ValueError):
            continue
        except StorageError as e:
            raise PublishError(f"cannot read the claim of {name} version {version}: {e}; nothing was written") from None
        if isinstance(record, dict) and record.get("key") == key:
            return version
    return None


def open_repository(url: str) -> Storage:
    """Open the repository and prove it is reachable (one list call), or raise PublishError."""
    try:
        storage = open_storage(url)
        if isinstance(storage, LocalStorage) and not storage.root.is_dir():
            raise StorageError(f"{storage.url}: no such folder; create the model repository first")
        storage.list(CLAIMS)
    except StorageError as e:
        raise PublishError(f"model repository {url} is not reachable: {e}; nothing was written") from None
    return storage


def check_compatible(storage: Storage, spec: triton_repo.ServingSpec) -> None:
    """A new version must keep the served labels and inputs: one config serves every version of a model."""
    key = f"{spec.name}/labels.txt"
    if storage.exists(key):
        labels = storage.get_bytes(key).decode().splitlines()
        if labels != list(spec.labels):
            raise PublishError(
                f"model {spec.name} serves labels {labels}; this export has {list(spec.labels)}. "
                "Publish it under a new --name; nothing was written"
            )
    config = served_config(storage, f"{spec.name}/config.pbtxt")
    if config is not None:
        served = [i.name for i in config.input]
        if served and served != list(spec.inputs):
            raise PublishError(
                f"model {spec.name} takes inputs {served}; this export takes {list(spec.inputs)}. "
                "Publish it under a new --name; nothing was written"
            )
