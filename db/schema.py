"""Tables of the experiment store.

An experiment owns its prompts, vectors, variants, runs, generations and ratings;
deleting it deletes them (ON DELETE CASCADE, foreign keys are on). A generation is
unique per (variant, prompt, sample): that constraint is what keeps a resumed run from
storing anything twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 1
RUN_STATES = ("running", "done", "cancelled", "failed", "interrupted")
CHOICES = ("left", "right", "tie", "both_bad")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key-value facts about the store itself (the schema version)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[str] = mapped_column(String(500))
    spec_json: Mapped[str] = mapped_column(Text)
    definition_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    prompts: Mapped[list[Prompt]] = relationship(
        back_populates="experiment", order_by="Prompt.position", cascade="all, delete-orphan", passive_deletes=True
    )
    variants: Mapped[list[Variant]] = relationship(
        back_populates="experiment", order_by="Variant.position", cascade="all, delete-orphan", passive_deletes=True
    )
    vectors: Mapped[list[Vector]] = relationship(
        back_populates="experiment", order_by="Vector.name", cascade="all, delete-orphan", passive_deletes=True
    )
    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", order_by="Run.id", cascade="all, delete-orphan", passive_deletes=True
    )


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("experiment_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    experiment: Mapped[Experiment] = relationship(back_populates="prompts")


class Vector(Base):
    """A named steering vector of an experiment; ``data`` is its safetensors bytes once extracted."""

    __tablename__ = "vectors"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_json: Mapped[str] = mapped_column(Text)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_id: Mapped[str] = mapped_column(String(500), default="")
    hidden_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(64), default="")
    pairs_hash: Mapped[str] = mapped_column(String(64), default="")
    extraction_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    experiment: Mapped[Experiment] = relationship(back_populates="vectors")


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    experiment: Mapped[Experiment] = relationship(back_populates="variants")


class Run(Base):
    """One execution (or resumption) of an experiment's pending generations."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(f"status IN {RUN_STATES}", name="run_status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    total_units: Mapped[int] = mapped_column(Integer, default=0)
    done_units: Mapped[int] = mapped_column(Integer, default=0)
    start_done: Mapped[int] = mapped_column(Integer, default=0)  # done before this run began (for its rate)
    batch_size: Mapped[int] = mapped_column(Integer, default=8)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    dtype: Mapped[str] = mapped_column(String(32), default="float32")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str] = mapped_column(String(200), default="")  # host:pid of the process running it
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    experiment: Mapped[Experiment] = relationship(back_populates="runs")


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("variant_id", "prompt_id", "sample_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    sample_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)  # equal share of its mixed batch's wall time
    peak_memory_bytes: Mapped[int] = mapped_column(Integer)  # peak of its batch
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    variant: Mapped[Variant] = relationship()
    prompt: Mapped[Prompt] = relationship()


class VariantMetric(Base):
    """A figure about a whole variant: compute, reversibility, or a mean score."""

    __tablename__ = "variant_metrics"
    __table_args__ = (UniqueConstraint("variant_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GenerationMetric(Base):
    """A scorer's number for one generation."""

    __tablename__ = "generation_metrics"
    __table_args__ = (UniqueConstraint("generation_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)


class Rating(Base):
    """One blind pairwise vote: which generation was shown on which side, and the choice."""

    __tablename__ = "ratings"
    __table_args__ = (CheckConstraint(f"choice IN {CHOICES}", name="rating_choice"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    rater: Mapped[str] = mapped_column(String(200))
    left_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    right_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    left: Mapped[Generation] = relationship(foreign_keys=[left_generation_id])
    right: Mapped[Generation] = relationship(foreign_keys=[right_generation_id])
