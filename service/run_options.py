"""How a run is asked for (its options), the phases it reports, and the "busy" sentence.

Kept apart from :mod:`service.running`, which imports the engine (and torch): the queue,
the status tables, the Run page and the command line's quick commands need only these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.errors import SteerLabError

# What a run is doing, stored in ``Run.phase`` (a finished run keeps the phase it stopped in,
# except a run that is done, whose phase is empty).
LOADING = "loading model"
PREPARING = "preparing"
EXTRACTING = "extracting vectors"
TRAINING = "training baselines"
GENERATING = "generating"
MEASURING = "measuring side effects"
SCORING = "scoring"
JUDGING = "judging"  # a judge run reads pairs of outputs (service.judging)
PHASES = (LOADING, PREPARING, EXTRACTING, TRAINING, GENERATING, MEASURING, SCORING, JUDGING)
TASKS = ("generate", "judge")


@dataclass(frozen=True)
class RunOptions:
    # 32 rows per mixed batch: on a GPT-2-small-sized model a batch of 32 makes about twice the tokens/s of
    # a batch of 8, most of what 64 gives (`steerlab bench decode`; README "Decode speed and batch size").
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"
    model: str | None = None  # overrides the file's model
    name: str | None = None  # overrides the file's experiment name
    replace: bool = False  # discard a stored experiment whose definition differs
    # Folders besides the experiment file's own from which the file may name prompt and vector files.
    allowed_dirs: tuple[str, ...] = ()
    quantize: str | None = None  # "4bit" or "8bit": bitsandbytes loading on a GPU
    # What the run does: generate (and measure, score) outputs, or let the judge ``judge``
    # read pairs of them; ``judge_hash`` is that judge's fingerprint when it was queued.
    task: str = "generate"
    judge: str | None = None
    judge_hash: str = ""

    def to_json(self) -> str:
        """What a queued run needs to be run by a worker (``runs.options_json``).

        A judge run's options start with ``{"task": "judge"`` (db.judgements.JUDGE_RUN_MARK,
        how the store tells its runs apart); a generation run's have no task (as before tasks).
        """
        options: dict[str, object] = {}
        if self.task == "judge":
            options.update(task="judge", judge=self.judge, judge_hash=self.judge_hash)
        options.update(batch_size=self.batch_size, device=self.device, dtype=self.dtype)
        if self.quantize is not None:
            options["quantize"] = self.quantize
        return json.dumps(options)

    @classmethod
    def from_json(cls, text: str) -> RunOptions:
        stored = json.loads(text or "{}")
        quantize = stored.get("quantize")
        return cls(
            batch_size=int(stored.get("batch_size", cls.batch_size)),
            device=str(stored.get("device", cls.device)),
            dtype=str(stored.get("dtype", cls.dtype)),
            quantize=str(quantize) if quantize else None,
            task="judge" if stored.get("task") == "judge" else "generate",
            judge=str(stored["judge"]) if stored.get("judge") is not None else None,
            judge_hash=str(stored.get("judge_hash", "")),
        )


def busy_error(name: str, run_id: int) -> SteerLabError:
    return SteerLabError(
        f"Experiment '{name}' already has a queued or running run (run {run_id}); wait for it or cancel it."
    )
