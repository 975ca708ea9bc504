"""What an adaptation baseline (a LoRA adapter or a fine-tuned copy) is trained with.

The settings of a variant's ``train`` section and their parsing, kept apart from the
training itself (:mod:`engine.training`, which needs torch) so that experiment
definitions can be read and validated without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engine.fields import Where, as_choice, as_float, as_int, as_mapping, as_str, check_keys

TRAINING_METHODS = ("lora", "finetune")


@dataclass(frozen=True)
class TrainingSpec:
    method: str  # "lora" or "finetune"
    examples_from: str | None = None  # a vector whose positive texts are the training set; None: training_examples
    epochs: int = 3
    learning_rate: float | None = None  # None: 1e-3 for LoRA, 1e-4 for fine-tuning
    rank: int = 8  # LoRA only
    batch_size: int = 8
    seed: int = 0

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-3 if self.method == "lora" else 1e-4)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_training(raw: Any, where: Where) -> TrainingSpec:
    data = as_mapping(raw, where)
    check_keys(data, ("method", "examples_from", "epochs", "learning_rate", "rank", "batch_size", "seed"), where)
    return TrainingSpec(
        method=as_choice(data.get("method", "lora"), TRAINING_METHODS, where.child("method")),
        examples_from=as_str(data["examples_from"], where.child("examples_from"))
        if data.get("examples_from")
        else None,
        epochs=as_int(data.get("epochs", 3), where.child("epochs"), 1, 1000),
        learning_rate=as_float(data["learning_rate"], where.child("learning_rate"), 1e-9, 1.0)
        if "learning_rate" in data
        else None,
        rank=as_int(data.get("rank", 8), where.child("rank"), 1, 1024),
        batch_size=as_int(data.get("batch_size", 8), where.child("batch_size"), 1, 4096),
        seed=as_int(data.get("seed", 0), where.child("seed"), 0),
    )
