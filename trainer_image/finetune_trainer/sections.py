"""The vocabulary of the trainer's configuration (config.py) and of the FineTuneJob spec: the base of every
section (camelCase aliases, unknown fields refused), the enumerations, and the model a section names."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Section(BaseModel):
    """Base of every spec section: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )


class TaskType(StrEnum):
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"
    REGRESSION = "regression"


class Truncation(StrEnum):
    HEAD = "head"
    TAIL = "tail"
    HEAD_TAIL = "head_tail"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


class DataFormat(StrEnum):
    AUTO = "auto"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    JSONL = "jsonl"
    PARQUET = "parquet"


class ClassWeighting(StrEnum):
    NONE = "none"
    BALANCED = "balanced"


NonEmpty = Annotated[str, Field(min_length=1)]


class AugmentOperation(StrEnum):
    SYNONYM = "synonym"
    INSERT = "insert"
    SWAP = "swap"
    DELETE = "delete"


class TeacherLogits(StrEnum):
    CACHED = "cached"
    ON_THE_FLY = "onTheFly"


class ModelSpec(Section):
    """The pretrained model to fine-tune."""

    name: NonEmpty = Field(
        description="Hub model id (bert-base-uncased), s3://bucket/prefix, local path, or "
        "package://<python package>/<path> for a model a Python package ships."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub.")
