"""Publish an export as a new numeric version in a Triton model repository, then have Triton serve it.

    python -m finetune_trainer publish --export RUN/export --repository s3://bucket/models --name sentiment \\
        [--version N] [--triton-url http://triton:8000] [--backend onnxruntime|python|tensorrt] [--variant int8] \\
        [--idempotency-key JOB_UID]

The repository is any ``finetune_trainer.storage`` URL (``file:///path`` or ``s3://bucket/prefix``); the
layout is ``finetune_trainer.triton_repo``'s (classifier, tokenizer, postprocess and a text-in ensemble).

Protocol (one writer wins, readers never see a partial version, nothing is ever overwritten):

1. Check everything that can fail before writing: the export folder, Triton's liveness (when a URL is given),
   the repository (reachable; for file://, an existing folder) and the served labels and inputs (a new
   version must fit the model's existing config).
2. With ``--idempotency-key``: if a served version was claimed under the same key (a retried export of the
   same job whose publication wrote at least the classifier's config), publish nothing new: write the
   model-level files that a publisher killed between its configs left unwritten, then go to step 6 with
   that version.
   Pick N: ``--version`` or one above the highest version found (version folders and claims).
3. Claim N with a create-only write of ``NAME/.claims/N.json`` (``put_if_absent``: an O_EXCL link on a file
   system, ``If-None-Match: *`` on S3). A version that exists or is claimed is refused. Triton ignores
   folders whose names are not numbers, so claims are invisible to it.
4. Write version N of each model, the file a backend loads last (model.py after its data; model.onnx is one
   atomic object), so a version folder is loadable only once complete.
5. Write the model-level files, configs last and the ensemble's config after the models it runs. Each
   config lists the versions it serves (a ``specific`` version policy): until its config names N, no Triton,
   polling or not, loads version N. Writing the config is the one atomic step that publishes it.
6. With ``--triton-url``: ask Triton (explicit model control) to load each model, with retries, then check
   that version N is ready and its metadata shows the expected inputs and outputs.

If step 4 fails, the version's files and its claim are deleted, so the repository is as it was. If step 5 or 6
fails, the previous model-level files are restored (and reloaded into Triton) but version N's files and claim
stay, unlisted: a Triton that read a config naming N meanwhile may be loading them, and the number is spent,
never served again. Either way the error says what failed.

On success the command prints the result as JSON and writes ``published: {"name", "version", "reused"}`` to the
container's termination message (``finetune_trainer.contract``), where the operator reads the version.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import contract, triton_repo
from finetune_trainer.errors import InputError, PublishError
from finetune_trainer.repository import (
    CLAIMS,
    check_compatible,
    claims_in,
    open_repository,
    published_under,
    served_config,
    versions_in,
)
from finetune_trainer.storage import Storage, StorageError
from finetune_trainer.triton_load import check_triton, load_and_check, reason, reload

log = logging.getLogger(__name__)

VARIANTS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


@dataclass
class PublishResult:
    """Where the published model is and what Triton confirmed."""

    repository: str
    name: str
    version: int
    models: dict[str, str]
    served_versions: list[int]
    endpoint: str | None = None
    ready: bool = False
    reused: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------- export


def read_export(export_dir: Path, backend: str, variant: str) -> tuple[dict[str, Any], str]:
    """The export report and the file served as the classifier, or an InputError naming what is missing."""
    report_path = export_dir / "export_report.json"
    if not report_path.is_file():
        raise InputError(f"--export {export_dir}: no export_report.json; run `python -m finetune_trainer export`")
    report = json.loads(report_path.read_text())
    if not report.get("parity", {}).get("passed"):
        raise InputError(f"--export {export_dir}: the export failed its parity check; it cannot be published")
    if backend == "tensorrt":
        model_file = "model.plan"
    elif variant in VARIANTS:
        model_file = VARIANTS[variant]
    else:
        raise InputError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    for needed in (model_file, "tokenizer.json", "labels.txt"):
        if not (export_dir / needed).is_file():
            hint = " (export on a machine with a GPU and tensorrt)" if needed == "model.plan" else ""
            raise InputError(f"--export {export_dir}: missing {needed}{hint}")
    return report, model_file


def serving_spec(
    report: dict[str, Any], name: str, versions: tuple[int, ...], **options: Any
) -> triton_repo.ServingSpec:
    tok = report.get("tokenizer", {})
    return triton_repo.ServingSpec(
        name=name,
        labels=tuple(report["labels"]),
        task=report.get("task", "single_label_classification"),
        inputs=tuple(report["inputs"]),
        text_pair=bool(report.get("text_pair")),
        max_sequence_length=int(report["max_sequence_length"]),
        pad_token=tok.get("pad_token") or "[PAD]",
        pad_token_id=int(tok.get("pad_token_id") or 0),
        padding_side=tok.get("padding_side") or "right",
        versions=versions,
        **options,
    )


# ------------------------------------------------------------------------------------------------ publish


def publish(
    export_dir: Path,
    repository: str,
    name: str,
    version: int | None = None,
    triton_url: str | None = None,
    backend: str = "onnxruntime",
    variant: str = "fp32",
    keep_versions: int | None = None,
    load_attempts: int = 3,
    retry_delay: float = 1.0,
    key: str | None = None,
    **serving: Any,
) -> PublishResult:
    """Publish ``export_dir`` as version N of ``name`` (see the module docstring for the protocol).

    Args:
        export_dir: an export folder (``python -m finetune_trainer export``).
        repository: ``file:///path`` or ``s3://bucket/prefix`` of the Triton model repository.
        name: model name; the text-in ensemble is ``NAME_text``.
        version: the version to create (default: one above the highest).
        triton_url: a Triton with explicit model control to load and confirm the version in.
        backend: ``onnxruntime`` (production), ``python`` (onnxruntime inside Triton's Python backend) or
            ``tensorrt`` (the export's model.plan).
        variant: ``fp32`` or ``int8`` (the export's model.int8.onnx), for the ONNX backends.
        keep_versions: serve only the newest K versions (default: every published version).
        key: an idempotency key (the operator passes the job's uid): a served version claimed under the same
            key is confirmed and returned (``reused``) instead of publishing the same model again.
        serving: other ``ServingSpec`` fields (max_batch_size, instance_kind, instance_count, ...).

    Returns:
        What was published and what Triton confirmed.

    Raises:
        InputError: an incomplete export or bad argument.
        PublishError: the version exists, the repository or Triton is unreachable, or Triton failed to serve
            the version (the repository is then restored).
    """
    if backend not in triton_repo.BACKENDS:
        raise InputError(f"--backend {backend!r}: expected one of {', '.join(triton_repo.BACKENDS)}")
    if version is not None and version < 1:
        raise InputError(f"--version {version}: expected a positive integer")
    report, model_file = read_export(Path(export_dir), backend, variant)
    try:
        draft = serving_spec(report, name, (), **serving)
    except ValueError as e:
        raise InputError(str(e)) from None
    names = triton_repo.model_names(name)
    client = check_triton(triton_url) if triton_url else None
    storage = open_repository(repository)
    keys = storage.list(f"{name}")
    check_compatible(storage, draft)

    config_key = f"{name}/config.pbtxt"
    previous: list[int] = []
    if (config := served_config(storage, config_key)) is not None:  # only a config publishes; folders without
        # one (a rolled-back or killed publication, Triton's __pycache__ left in them) are taken numbers, never
        # served versions
        previous = triton_repo.served_versions(config) or sorted(versions_in(keys, name))
    if key and (done := published_under(storage, name, key, claims_in(keys, name), previous)) is not None:
        spec = serving_spec(report, name, tuple(previous), **serving)
        _complete(storage, spec, backend)
        return _confirm_existing(repository, triton_url, client, spec, done, load_attempts, retry_delay)

    taken = set().union(*(versions_in(keys, m) for m in names.all()[:3])) | claims_in(keys, name)
    new = version if version is not None else max(taken, default=0) + 1
    if new in taken:
        raise PublishError(
            f"version {new} of {name} already exists in {repository}; versions are never overwritten "
            f"(existing: {sorted(taken)}); omit --version to publish {max(taken) + 1}"
        )
    served = sorted({*previous, new})
    if keep_versions:
        served = served[-keep_versions:]
    spec = serving_spec(report, name, tuple(served), **serving)

    claim = f"{name}/{CLAIMS}/{new}.json"
    record = {"version": new, "created": time.time(), "host": socket.gethostname(), "key": key,
              "export": report.get("files")}  # fmt: skip
    try:
        claimed = storage.put_if_absent(claim, json.dumps(record).encode())
    except StorageError as e:
        raise PublishError(f"cannot claim version {new} in {repository}: {e}; nothing was written") from None
    if not claimed:
        raise PublishError(f"version {new} of {name} was just claimed by another publisher; publish again")

    written: list[str] = [claim]
    saved: dict[str, bytes | None] = {}
    try:
        files = triton_repo.version_files(spec, new, Path(export_dir), backend, model_file)
        # Entry points last: a version folder is loadable only once its data is there.
        for key in sorted(files, key=lambda k: k.endswith("/model.py")):
            _put(storage, key, files[key])
            written.append(key)
        for key, data in triton_repo.ensemble_version_files(spec).items():
            if storage.put_if_absent(key, data):
                written.append(key)
        for key, data in triton_repo.model_files(spec, backend).items():  # configs last, ensemble's last
            saved[key] = storage.get_bytes(key) if storage.exists(key) else None
            storage.put_bytes(key, data)
        result = PublishResult(repository, name, new, asdict(names), served, triton_url)
        if client is not None:
            result.metadata = load_and_check(client, spec, new, load_attempts, retry_delay)
            result.ready = True
    except Exception as e:  # whatever failed, no config lists the new version any more
        listed = bool(saved)  # a config naming it was (or may have been) written: a Triton may be loading it
        restored = _rollback(storage, [] if listed else written, saved)
        if client is not None:
            reload(client, names, existed={k.split("/")[0] for k, v in saved.items() if v is not None})
        if not restored:
            state = "restoring the repository failed: check it by hand"
        elif listed:
            state = f"the previous configs were restored; version {new} stays unlisted (its number is spent)"
        else:
            state = "the repository was restored"
        raise PublishError(f"publishing {name} version {new} to {repository} failed: {reason(e)}; {state}") from None
    log.info("published %s version %d to %s (serving %s)", name, new, repository, served)
    return result


def _complete(storage: Storage, spec: triton_repo.ServingSpec, backend: str) -> None:
    """Finish what a publisher killed between its configs left: write the model-level files that differ.

    The classifier's config is written first, so it can name a version whose other configs do not yet; the
    version's own files are complete before any config is written.
    """
    try:
        for key, data in triton_repo.ensemble_version_files(spec).items():
            storage.put_if_absent(key, data)
        for key, data in triton_repo.model_files(spec, backend).items():
            if not storage.exists(key) or storage.get_bytes(key) != data:
                log.info("completing %s (left unwritten by an interrupted publication)", key)
                storage.put_bytes(key, data)
    except StorageError as e:
        raise PublishError(f"cannot complete the publication of {spec.name}: {e}") from None


def _confirm_existing(
    repository: str, triton_url: str | None, client: Any, spec: triton_repo.ServingSpec, version: int,
    attempts: int, delay: float,
) -> PublishResult:  # fmt: skip
    """A version this key already published: have Triton serve it (no file is written), or PublishError."""
    names = triton_repo.model_names(spec.name)
    log.info("%s version %d was already published under this idempotency key; confirming it", spec.name, version)
    result = PublishResult(repository, spec.name, version, asdict(names), list(spec.versions), triton_url,
                           reused=True)  # fmt: skip
    if client is None:
        return result
    try:
        result.metadata = load_and_check(client, spec, version, attempts, delay)
    except Exception as e:
        raise PublishError(
            f"{spec.name} version {version} (published earlier under this key) is not served: {reason(e)}; "
            "nothing was written"
        ) from None
    result.ready = True
    return result


def _put(storage: Storage, key: str, value: Path | bytes) -> None:
    if isinstance(value, bytes):
        storage.put_bytes(key, value)
    else:
        storage.put_file(value, key)


def _rollback(storage: Storage, written: list[str], saved: dict[str, bytes | None]) -> bool:
    """Undo a failed publication: previous model-level files back, then the ``written`` files deleted."""
    try:
        for key, data in reversed(saved.items()):
            if data is None:
                storage.delete([key])
            else:
                storage.put_bytes(key, data)
        storage.delete(list(reversed(written)))
        return True
    except StorageError as e:
        log.error("rollback failed: %s", e)
        return False


# ---------------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune_trainer publish", description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, required=True, help="export folder (python -m finetune_trainer export)")
    p.add_argument("--repository", required=True, help="model repository URL: file:///path or s3://bucket/prefix")
    p.add_argument("--name", required=True, help="model name (the text-in ensemble is NAME_text)")
    p.add_argument("--version", type=int, help="version to create (default: one above the highest)")
    p.add_argument("--triton-url", help="Triton to load and confirm it in: http://host:8000 or grpc://host:8001")
    p.add_argument("--backend", choices=triton_repo.BACKENDS, default="onnxruntime")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="fp32")
    p.add_argument("--keep-versions", type=int, help="serve only the newest K versions")
    p.add_argument("--idempotency-key", help="publish at most once under this key (the operator passes the job uid)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-us", type=int, default=500,
                   help="how long the classifier may wait to fill a batch (tokenizer and postprocess never wait)")
    p.add_argument("--instance-kind", choices=triton_repo.INSTANCE_KINDS, default="KIND_CPU")
    p.add_argument("--instance-count", type=int, default=1)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = publish(
            args.export,
            args.repository,
            args.name,
            args.version,
            args.triton_url,
            args.backend,
            args.variant,
            args.keep_versions,
            key=args.idempotency_key,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            instance_kind=args.instance_kind,
            instance_count=args.instance_count,
        )
    except InputError as e:  # retrying cannot fix it
        return contract.fail(e, contract.EXIT_BAD_INPUT)
    except PublishError as e:
        return contract.fail(e, contract.EXIT_FAILED)
    summary = result.to_dict()
    summary.pop("metadata")
    print(json.dumps(summary, indent=2))
    contract.write_termination(contract.published_line(result.name, result.version, result.reused))
    return 0
