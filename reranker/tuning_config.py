"""The settings every tuning run shares: `ByMode` (the mode and per-mode learning rate that a
``lora`` switch gives) and `TuneConfig`, the base of the cross-encoder's and the bi-encoder's
tuning configs.

Each config subclass sets its learning rates per mode and declares the fields that differ
(batch size, token length, mined negatives, validation depth)::

    class MyTuneConfig(TuneConfig):
        LORA_RATE: ClassVar[float] = 5e-4
        FULL_RATE: ClassVar[float] = 3e-5
        max_length: int = Field(default=128, ge=16, le=512)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class ByMode:
    """What every tuning config derives from its ``lora`` switch: the mode's name, and an unset
    ``learning_rate`` resolved per mode (``LORA_RATE`` or ``FULL_RATE``, set by the config).

    Mixed into pydantic models, so it declares no fields of its own.
    """

    if TYPE_CHECKING:
        LORA_RATE: ClassVar[float]
        FULL_RATE: ClassVar[float]
        lora: bool
        learning_rate: float | None

    @property
    def mode(self) -> Literal["lora", "full"]:
        return "lora" if self.lora else "full"

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return self.LORA_RATE if self.lora else self.FULL_RATE


class TuneConfig(ByMode, BaseModel):
    """Settings of one tuning run that both tuned models have; every field is recorded in the
    model card.

    ``learning_rate=None`` picks the subclass's rate for the mode. ``gains=None`` is the
    exponential gain ``2**g - 1`` (training targets and validation nDCG). ``batch_size``,
    ``negatives_per_query`` and ``validation_depth`` are the cross-encoder's; the bi-encoder
    redeclares them. ``eval_steps=None`` validates once per epoch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lora: bool = True
    epochs: int = Field(default=2, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=1024)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    negatives_per_query: int = Field(default=10, ge=0, le=1000)
    gains: dict[int, float] | None = None
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_depth: int = Field(default=50, ge=1, le=1000)
    k: int = Field(default=10, ge=1, le=100)
    eval_steps: int | None = Field(default=None, ge=1)
    early_stopping_patience: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ("query", "value")
    seed: int = 0
