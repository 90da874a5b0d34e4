"""The optional stages a job adds to its training, each a section of the trainer's configuration (config.py):
profiling of a few steps, distillation from a teacher, masked-LM pretraining on domain text first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from pydantic import Field, model_validator

from finetune_trainer.sections import DataFormat, ModelSpec, NonEmpty, Section, TaskType, TeacherLogits

if TYPE_CHECKING:
    from finetune_trainer.config import DatasetSpec, TaskSpec


class ProfilingSpec(Section):
    """torch.profiler over optimizer steps startStep..endStep of one rank; off (and free) when absent."""

    start_step: int = Field(5, ge=1, description="First optimizer step profiled (1 is the first step).")
    end_step: int = Field(7, ge=1, description="Last optimizer step profiled (inclusive).")
    rank: int = Field(0, ge=0, description="Global rank whose steps are profiled.")
    memory: bool = Field(True, description="Record tensor allocations (memory columns of the table).")
    record_shapes: bool = Field(False, description="Record operator input shapes (bigger trace).")
    with_stack: bool = Field(False, description="Record Python stacks of operators (much bigger trace).")
    row_limit: int = Field(50, ge=1, le=10000, description="Rows of the key-averages table.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end_step < self.start_step:
            raise ValueError(f"profiling.endStep ({self.end_step}) must be at least startStep ({self.start_step})")
        return self


class DistillationSpec(Section):
    """Knowledge distillation: the job's model (the student) learns the labels and the teacher's softened
    predictions, loss = crossEntropyWeight * CE(labels) + klWeight * T^2 * KL(teacher || student) at T."""

    teacher: ModelSpec = Field(
        description="The teacher: a classifier trained on the job's labels (same forms as model.name); its "
        "tokenizer may differ from the student's."
    )
    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature T of both distributions.")
    cross_entropy_weight: float = Field(0.7, ge=0, description="Weight of the cross-entropy with the labels.")
    kl_weight: float = Field(0.3, ge=0, description="Weight of the KL divergence from the teacher.")
    teacher_logits: TeacherLogits = Field(
        TeacherLogits.CACHED,
        description="cached: the teacher scores each training example once, before training (kept in the run's "
        "cache beside the tokenized data); onTheFly: it scores every batch (needed with dataset.augmentation, "
        "whose rows change each epoch).",
    )

    @model_validator(mode="after")
    def _some_weight(self) -> Self:
        if self.cross_entropy_weight == 0 and self.kl_weight == 0:
            raise ValueError("crossEntropyWeight and klWeight cannot both be 0")
        return self


def check_distillation(distillation: DistillationSpec | None, task: TaskSpec, dataset: DatasetSpec) -> None:
    """What distillation needs from the other sections (ValueError with the field names)."""
    if distillation is None:
        return
    if task.type != TaskType.SINGLE_LABEL:
        raise ValueError(f"distillation needs task.type single_label_classification, got {task.type}")
    if getattr(dataset, "augmentation", None) is not None and distillation.teacher_logits == TeacherLogits.CACHED:
        raise ValueError("distillation.teacherLogits must be onTheFly with dataset.augmentation: augmented rows "
                         "change each epoch, so cached teacher logits would not match them")


class PretrainingSpec(Section):
    """Domain-adaptive masked-LM pretraining of the encoder on unlabelled text, a first stage of the same job.

    The encoder learns the domain's text by BERT's masked-token objective; the classifier stage starts from it."""

    source: NonEmpty = Field(
        description="Unlabelled domain text, same forms as dataset.train (file path or glob, s3://, package://, "
        "hub dataset name); a .txt file is one text per line."
    )
    format: DataFormat = Field(DataFormat.AUTO, description="File format; auto uses the file extension.")
    text_column: NonEmpty = Field("text", description="Column holding the text (a .txt file's lines are text).")
    split: str | None = Field(None, description="Split of a hub dataset (default: train).")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many texts (seeded choice).")
    epochs: float | None = Field(1.0, gt=0, description="Passes over the domain text.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    mask_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens (or words) masked.")
    whole_word_mask: bool = Field(
        False, description="Mask every piece of a word together (WordPiece '##' continuations with their word) "
        "instead of single tokens; masked words are all replaced by the mask token."
    )
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Peak learning rate of this stage (default: hyperparameters.learningRate)."
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="Texts per process per step (default: hyperparameters.batchSize)."
    )
    validation_split: float = Field(
        0.05, gt=0, lt=0.5,
        description="Share of the texts held out to measure the masked-LM loss before and after the stage.",
    )

    @model_validator(mode="after")
    def _length(self) -> Self:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("pretraining: one of epochs or maxSteps is required")
        return self
