"""The trainer's own configuration: what a worker needs to train, torch-free.

These models are the `model`, `dataset`, `task`, `hyperparameters` and `checkpoint` sections of a FineTuneJob
spec (operator/finetune_operator/api.py composes them into the full API), plus the run-specific fields the
operator or `finetune run` fills in. A pod receives one JSON file of a ``TrainerConfig``.

Field names are snake_case in Python and camelCase in YAML/JSON, as Kubernetes APIs are.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator

from finetune_trainer.config_errors import ConfigError, parse
from finetune_trainer.preprocessing import CLEANING_STEPS
from finetune_trainer.sections import (
    AugmentOperation,
    ClassWeighting,
    DataFormat,
    ModelSpec,
    NonEmpty,
    Precision,
    Scheduler,
    Section,
    TaskType,
    Truncation,
)
from finetune_trainer.stages import DistillationSpec, PretrainingSpec, ProfilingSpec, check_distillation


class BackTranslation(Section):
    """Paraphrases by translating each training text to a pivot language and back (one extra copy each)."""

    forward_model: NonEmpty = Field(
        description="Translation model into the pivot language (same forms as model.name), "
        "e.g. Helsinki-NLP/opus-mt-en-de."
    )
    backward_model: NonEmpty = Field(description="Translation model back from the pivot language.")
    max_length: int = Field(128, ge=8, le=1024, description="Most tokens generated per translation.")
    batch_size: int = Field(16, ge=1, le=1024, description="Texts translated at once.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam width (1 = greedy decoding).")


class AugmentationSpec(Section):
    """EDA-style augmentation of the training split (Wei and Zou, 2019), drawn anew each epoch."""

    copies: int = Field(4, ge=0, le=64, description="Augmented copies of each training example per epoch.")
    rate: float = Field(
        0.1, gt=0, le=0.5, description="Share of an example's words that one operation changes (EDA's alpha)."
    )
    operations: list[AugmentOperation] = Field(
        default_factory=lambda: list(AugmentOperation), min_length=1,
        description="Operations a copy is made with, one chosen per copy: synonym (replace words with WordNet "
        "synonyms), insert (insert a synonym of a word), swap (swap two words), delete (drop words).",
    )
    back_translation: BackTranslation | None = Field(
        None, description="Also add one back-translated copy of each example (needs translation models)."
    )

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.copies == 0 and self.back_translation is None:
            raise ValueError("dataset.augmentation: copies is 0 and no backTranslation is set: nothing to add")
        return self


class HubSplits(Section):
    """Which split of a hub dataset (or of a folder laid out like one) each role reads."""

    train: str | None = Field(None, description="Split read for training (default: train).")
    validation: str | None = Field(
        None, description="Split read for validation (default: validation, dev or valid, where one exists)."
    )
    test: str | None = Field(None, description="Split read for the test set (default: test, where it exists).")


CleaningStep = StrEnum("CleaningStep", {name: name for name in CLEANING_STEPS})


class DatasetSpec(Section):
    """Where the labelled text comes from and which columns mean what."""

    train: NonEmpty = Field(
        description="Training data: a file path or glob, s3:// URL, package:// path, or a hub dataset name."
    )
    validation: str | None = Field(None, description="Validation data, same forms as train.")
    test: str | None = Field(None, description="Test data evaluated once after training.")
    format: DataFormat = Field(DataFormat.AUTO, description="File format; auto uses the file extension.")
    text_column: NonEmpty = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Optional second text column (sentence pairs).")
    label_column: NonEmpty = Field("label", description="Column holding the label(s) or score.")
    label_names: list[NonEmpty] | None = Field(
        None, description="Label names in id order; inferred (sorted) from the training data when absent."
    )
    validation_split: float = Field(
        0.1, gt=0, lt=1,
        description="Fraction of train held out (stratified by label for single-label tasks) when no validation "
        "set is given.",
    )
    test_split: float | None = Field(
        None, gt=0, lt=1,
        description="Fraction of train held out as the test set (stratified), before validation is held out: "
        "training and model selection never see it.",
    )
    splits: HubSplits = Field(
        HubSplits(), description="Split per role for a hub dataset or a folder of train.*, validation.*, test.*."
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use at most this many training rows.")
    max_eval_samples: int | None = Field(
        None, ge=1, description="Evaluate on at most this many rows (validation and test)."
    )
    cleaning: list[CleaningStep] = Field(
        default_factory=list,
        description="Text normalisations applied in this order before tokenizing, recorded with the model and "
        "applied unchanged by evaluation, export, serving and predict: " + ", ".join(CLEANING_STEPS) + ".",
    )
    augmentation: AugmentationSpec | None = Field(
        None, description="Add augmented copies of the training examples (the training split only)."
    )

    @model_validator(mode="after")
    def _distinct_columns(self) -> Self:
        cols = [self.text_column, self.label_column] + (
            [self.text_pair_column] if self.text_pair_column else []
        )
        if len(set(cols)) != len(cols):
            raise ValueError(f"textColumn, textPairColumn and labelColumn must differ, got {cols}")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError("labelNames must be unique")
        if self.test and self.test_split is not None:
            raise ValueError("set one of test (a test set) or testSplit (a fraction of train held out), not both")
        return self


class TaskSpec(Section):
    """What is predicted."""

    type: TaskType = Field(TaskType.SINGLE_LABEL, description="Problem type.")
    num_labels: int | None = Field(
        None, ge=1, description="Number of labels (1 for regression); inferred from labelNames or the data."
    )
    multi_label_threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability above which a label is predicted (multi-label)."
    )

    @model_validator(mode="after")
    def _regression_single_output(self) -> Self:
        if self.type == TaskType.REGRESSION and self.num_labels not in (None, 1):
            raise ValueError(f"numLabels must be 1 for regression, got {self.num_labels}")
        return self


class EarlyStopping(Section):
    """Stop when the evaluation metric has not improved for `patience` evaluations."""

    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class LoraSpec(Section):
    """LoRA adapters (peft) on the encoder's attention; the classification head is trained in full."""

    rank: int = Field(16, ge=1, le=1024, description="Rank of each adapter's update matrices (LoRA r).")
    alpha: float = Field(32.0, gt=0, description="Scaling of the update (LoRA alpha); the update is alpha/rank.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[NonEmpty] | None = Field(
        None, min_length=1,
        description="Names of the linear layers that get adapters (query, value, ...); default: peft's "
        "choice for the model type (query and value for BERT-family models).",
    )


class Hyperparameters(Section):
    """Optimisation recipe. Defaults follow the usual BERT fine-tuning recipe (AdamW 2e-5, 10% warmup)."""

    epochs: float | None = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Peak learning rate of the encoder.")
    head_learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Learning rate of the classification head (default: learningRate)."
    )
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay (not on bias/LayerNorm).")
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    warmup_ratio: float | None = Field(0.1, ge=0, lt=1, description="Warmup as a fraction of total steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps; overrides warmupRatio.")
    scheduler: Scheduler = Field(Scheduler.LINEAR, description="Learning-rate decay after warmup.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per process per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    auto_batch_size: bool = Field(
        False,
        description="On CUDA out of memory, halve batchSize and double gradientAccumulationSteps in place (the "
        "same effective batch and optimizer state) instead of failing.",
    )
    max_non_finite_steps: int = Field(
        3, ge=1,
        description="Consecutive optimizer steps with a NaN or infinite loss (not applied) after which the run "
        "stops and is not exported; fp16 loss-scaler skips do not count.",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    max_seq_length: int = Field(128, ge=8, le=8192, description="Tokens per example after truncation.")
    truncation: Truncation = Field(
        Truncation.HEAD, description="Which tokens to keep: head, tail, or head_tail (first and last)."
    )
    head_tokens: int = Field(
        64, ge=1, description="For head_tail: tokens kept from the start; the rest come from the end."
    )
    precision: Precision = Field(
        Precision.AUTO, description="auto: bf16 where supported, else fp32. fp16 needs a GPU."
    )
    gradient_checkpointing: bool = False
    freeze_encoder: bool = Field(False, description="Train only the classification head.")
    lora: LoraSpec | None = Field(
        None, description="Train LoRA adapters instead of the whole encoder; `lora: {}` takes the defaults."
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1,
        description="Layer-wise learning-rate decay: the top encoder layer trains at learningRate, each layer "
        "below at the rate of the one above times this factor, the embeddings below the bottom layer.",
    )
    train_top_layers: int | None = Field(
        None, ge=1, description="Train only the top N encoder layers (and the head); freeze the rest."
    )
    head_dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout before the classification head (default: the model's own)."
    )
    seed: int = Field(42, ge=0)
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps (default: each epoch)."
    )
    metric_for_best_model: str | None = Field(
        None, description="Metric that selects the best model (default: f1_macro, or mse for regression)."
    )
    early_stopping: EarlyStopping | None = None
    class_weights: ClassWeighting | list[Annotated[float, Field(gt=0)]] = Field(
        ClassWeighting.NONE, description="none, balanced (inverse frequency), or one weight per label."
    )
    balanced_sampling: bool = Field(False, description="Sample classes uniformly (single-label only).")
    group_by_length: bool = Field(
        False,
        description="Batch examples of similar length (within shuffled groups of 50 batches): less padding, "
        "faster epochs; batches are still in random order.",
    )
    log_every_steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("one of epochs or maxSteps is required")
        frozen = [f for f, on in (("freezeEncoder", self.freeze_encoder), ("trainTopLayers", self.train_top_layers),
                                  ("lora", self.lora)) if on]
        if len(frozen) > 1:
            raise ValueError(f"{', '.join(frozen)}: set only one, each chooses what is trained")
        if self.truncation == Truncation.HEAD_TAIL and self.head_tokens >= self.max_seq_length - 2:
            raise ValueError(
                f"headTokens must be less than maxSeqLength - 2 ({self.max_seq_length - 2}) for head_tail truncation"
            )
        return self


class S3Spec(Section):
    """S3 connection details; credentials come from a Secret, never from the spec."""

    endpoint: str | None = Field(None, description="Endpoint URL for S3-compatible stores (MinIO, Ceph).")
    region: str | None = None
    addressing_style: str = Field("auto", pattern="^(auto|path|virtual)$")
    credentials_secret: str | None = Field(
        None, description="Secret with keys accessKey and secretKey (mounted into pods, never inlined)."
    )


class CheckpointSpec(Section):
    """Where and how often training state is saved for resume."""

    storage: str | None = Field(
        None, description="s3://bucket/prefix or a path; each job writes under <storage>/<namespace>/<name>/<uid>."
    )
    every_steps: int | None = Field(200, ge=1, description="Checkpoint every N optimizer steps.")
    every_minutes: float | None = Field(None, gt=0, description="Also checkpoint every M minutes.")
    keep_last: int = Field(2, ge=1, le=100, description="Committed checkpoints kept, plus the best.")
    keep_best: bool = True
    s3: S3Spec | None = None


class TrainerConfig(Section):
    """Everything a trainer process needs: the job's sections plus where this run writes."""

    job_name: NonEmpty = "finetune"
    namespace: str = "default"
    job_uid: str | None = Field(
        None, description="The FineTuneJob's uid, which keys its storage folder (finetune_trainer.contract)."
    )
    output_dir: NonEmpty = Field(description="Local directory for the final model, metrics and plot.")
    model: ModelSpec
    dataset: DatasetSpec
    task: TaskSpec = TaskSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    checkpoint: CheckpointSpec = CheckpointSpec()
    output_uri: str | None = Field(None, description="Where the final model is uploaded (s3:// or path).")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port of rank 0.")
    progress_file: str | None = Field(None, description="JSON file rank 0 rewrites with progress.")
    profiling: ProfilingSpec | None = Field(None, description="Profile a few training steps of one rank.")
    distillation: DistillationSpec | None = Field(None, description="Learn from a teacher model as well.")
    pretraining: PretrainingSpec | None = Field(None, description="Masked-LM stage on domain text first.")
    split_seed: int | None = Field(
        None, ge=0, description="Seed of the validation/test hold-outs (default hyperparameters.seed); the members "
        "of an ensemble share the job's, so all of them hold out the same rows."
    )

    @property
    def hold_out_seed(self) -> int:
        return self.hyperparameters.seed if self.split_seed is None else self.split_seed

    @model_validator(mode="after")
    def _distillation(self) -> Self:
        check_distillation(self.distillation, self.task, self.dataset)
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainerConfig:
        """Read a trainer config JSON file, raising ConfigError with every wrong field named."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError([f"{path}: not valid UTF-8 JSON ({e})"]) from None
        return parse(cls, raw, prefix="")


