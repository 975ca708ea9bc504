"""Tables of the experiment store.

An experiment owns its prompts, vectors, variants, runs, generations and ratings;
deleting it deletes them (ON DELETE CASCADE, foreign keys are on). A generation is
unique per (variant, prompt, sample): that constraint is what keeps a resumed run from
storing anything twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATES = ("queued", "running", "done", "cancelled", "failed", "interrupted")
# A run in one of these states holds its experiment: the database allows one per experiment.
ACTIVE_RUN_STATES = ("queued", "running")
CHOICES = ("left", "right", "tie", "both_bad")
RATER_KINDS = ("human", "judge")  # a person on the Rate page (or imported), or an LLM judge
JUDGE_RATER_PREFIX = "judge:"  # a judge's votes are stored as rater "judge:<name>"; no person may take such a name
JUDGEMENT_CHOICES = ("left", "right", "tie")
ROLES = ("owner", "analyst", "rater")  # each role can do everything the ones after it can


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
    # The secret of this experiment's rater link: whoever signs in through it becomes a
    # rater of this experiment (and of nothing else). None: no link handed out.
    rater_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Which exact weights the model reference named when a run last loaded it (JSON; see
    # engine.model_source): a GGUF file's SHA-256, a hub revision. "{}" until the first run.
    model_source: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")

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
    # Its definition (pairs, method, file) lives in the experiment's spec_json only; the row
    # keeps the extracted data and what it was extracted from.
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_id: Mapped[str] = mapped_column(String(500), default="")
    hidden_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(64), default="")
    pairs_hash: Mapped[str] = mapped_column(String(64), default="")
    extraction_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    experiment: Mapped[Experiment] = relationship(back_populates="vectors")


class Variant(Base):
    """A variant's identity (generations and metrics point at it); its definition is in the
    experiment's spec_json, the one copy of the definition."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    experiment: Mapped[Experiment] = relationship(back_populates="variants")


class Run(Base):
    """One execution (or resumption) of an experiment's pending generations."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN {RUN_STATES}", name="run_status"),
        # One queued or running run per experiment, enforced by the database on every host
        # (a partial unique index: SQLite and PostgreSQL both have them).
        Index(
            "one_active_run_per_experiment",
            "experiment_id",
            unique=True,
            sqlite_where=text(f"status IN {ACTIVE_RUN_STATES}"),
            postgresql_where=text(f"status IN {ACTIVE_RUN_STATES}"),
        ),
    )
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
    # What the run is doing now ("generating", "measuring", "scoring"): the progress bar alone
    # reads "240/240" for the minute a run spends measuring and scoring after its last batch.
    phase: Mapped[str] = mapped_column(String(32), default="", server_default="")
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The job queue: a worker claims a queued run by taking its lease, renews the lease with
    # each heartbeat, and another worker takes the run over once the lease has expired.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # claims so far
    options_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")  # how to run it
    requested_by: Mapped[str] = mapped_column(String(320), default="", server_default="")
    traceback: Mapped[str] = mapped_column(Text, default="", server_default="")  # of a failed run
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
    # Peak of its batch: gigabytes on a GPU, past a 32-bit integer, so 64 bits (SQLite's INTEGER already is).
    peak_memory_bytes: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    # A hidden state or logit of this row became inf/NaN (an absurd coefficient): its text is
    # whatever the broken logits gave, so pages warn instead of scoring it silently.
    non_finite: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
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
    # A hash of everything the figure was computed from (scorer definition, references,
    # training examples, the variant): a figure whose inputs changed since is stale.
    source_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GenerationMetric(Base):
    """A scorer's number for one generation."""

    __tablename__ = "generation_metrics"
    __table_args__ = (UniqueConstraint("generation_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    source_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")  # as in VariantMetric


class Rating(Base):
    """One blind pairwise vote: which generation was shown on which side, and the choice.

    ``pair_low_id``/``pair_high_id`` are the two generations in id order, whatever the sides:
    with them the database itself guarantees one vote per (experiment, rater, pair), even when
    one rater votes the same pair from several tabs or processes at the same instant.
    ``repeat`` numbers a deliberate second showing of a pair to the same rater (to measure
    self-consistency); ordinary votes are repeat 0.
    """

    __tablename__ = "ratings"
    __table_args__ = (
        CheckConstraint(f"choice IN {CHOICES}", name="rating_choice"),
        CheckConstraint(f"rater_kind IN {RATER_KINDS}", name="rating_rater_kind"),
        UniqueConstraint(
            "experiment_id", "rater", "pair_low_id", "pair_high_id", "repeat", name="one_vote_per_rater_and_pair"
        ),
        # The rating queue and per-rater progress filter by (experiment, rater); deleting a
        # generation looks its votes up by either side.
        Index("ix_ratings_experiment_rater", "experiment_id", "rater"),
        Index("ix_ratings_left_generation_id", "left_generation_id"),
        Index("ix_ratings_right_generation_id", "right_generation_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    rater: Mapped[str] = mapped_column(String(200))
    left_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    right_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    pair_low_id: Mapped[int] = mapped_column(Integer)
    pair_high_id: Mapped[int] = mapped_column(Integer)
    repeat: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    choice: Mapped[str] = mapped_column(String(16))
    # "judge" for an LLM judge's vote (its rater is the judge's name): statistics keep them apart.
    rater_kind: Mapped[str] = mapped_column(String(16), default="human", server_default="human")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    left: Mapped[Generation] = relationship(foreign_keys=[left_generation_id])
    right: Mapped[Generation] = relationship(foreign_keys=[right_generation_id])


class Judgement(Base):
    """One reading of a pair by an LLM judge, in one order (left shown first).

    A judge reads each pair in both orders; the vote it stores in ``ratings`` is the
    verdict both readings agree on, or a tie. ``p_left``/``p_right`` are the probabilities
    of the two answer labels (a local judge); ``answer`` is an endpoint's reply text.
    """

    __tablename__ = "judgements"
    __table_args__ = (
        CheckConstraint(f"choice IN {JUDGEMENT_CHOICES}", name="judgement_choice"),
        UniqueConstraint(
            "experiment_id", "judge", "left_generation_id", "right_generation_id", name="one_judgement_per_order"
        ),
        Index("ix_judgements_right_generation_id", "right_generation_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    judge: Mapped[str] = mapped_column(String(200))
    left_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    right_generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(16))
    p_left: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_right: Mapped[float | None] = mapped_column(Float, nullable=True)
    answer: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Membership(Base):
    """A signed-in user's role in one experiment (used only when sign-in is configured)."""

    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("experiment_id", "user", name="one_role_per_user"),
        CheckConstraint(f"role IN {ROLES}", name="membership_role"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    user: Mapped[str] = mapped_column(String(320))  # the sign-in's e-mail address
    role: Mapped[str] = mapped_column(String(16))
    added_by: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what to which experiment, and when. Kept when the experiment is deleted."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(32))  # created, changed, deleted, rated, exported, ...
    experiment: Mapped[str] = mapped_column(String(200), index=True)  # its name, not a key: it outlives the row
    detail: Mapped[str] = mapped_column(Text, default="")


ENDPOINTS = ("chat", "completions")  # the OpenAI endpoint a served response came from
THUMBS = ("up", "down")


class Deployment(Base):
    """A live A/B test: an experiment's variants served to real users by ``steerlab serve``.

    Its state lives here and nowhere else, so every server replica sees the same split;
    ``version`` grows with every change and is what servers poll.
    """

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # the `model` clients send
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    # Where a stopped arm's traffic goes.
    baseline_variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    show_variant: Mapped[bool] = mapped_column(Boolean, default=False)  # False: blind responses
    live: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(320), default="")
    experiment: Mapped[Experiment] = relationship()
    baseline: Mapped[Variant] = relationship()
    arms: Mapped[list[DeploymentArm]] = relationship(
        back_populates="deployment",
        order_by="DeploymentArm.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class DeploymentArm(Base):
    """One variant of a deployment, its traffic weight and its kill switch."""

    __tablename__ = "deployment_arms"
    __table_args__ = (
        UniqueConstraint("deployment_id", "variant_id", name="one_arm_per_variant"),
        CheckConstraint("weight >= 0", name="arm_weight_not_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # order of the cumulative weights: users' arms depend on it
    weight: Mapped[float] = mapped_column(Float)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_by: Mapped[str] = mapped_column(String(320), default="")
    deployment: Mapped[Deployment] = relationship(back_populates="arms")
    variant: Mapped[Variant] = relationship()


class ServedResponseRecord(Base):
    """One response ``steerlab serve`` gave a client: what was asked, what ran, what came back.

    ``served_variant_id`` is None for a request that brought its own steering spec
    (``steering_json``). ``user_key`` is the SHA-256 of the client's ``user`` field: the raw
    value is never stored.
    """

    __tablename__ = "served_responses"
    __table_args__ = (
        CheckConstraint(f"endpoint IN {ENDPOINTS}", name="served_endpoint"),
        Index("ix_served_responses_deployment_served", "deployment_id", "served_variant_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(String(100), unique=True)  # the id the client saw
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), nullable=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=True, index=True
    )
    assigned_variant_id: Mapped[int | None] = mapped_column(
        ForeignKey("variants.id", ondelete="SET NULL"), nullable=True
    )
    served_variant_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id", ondelete="SET NULL"), nullable=True)
    steering_json: Mapped[str] = mapped_column(Text, default="")
    user_key: Mapped[str] = mapped_column(String(64), default="")
    endpoint: Mapped[str] = mapped_column(String(16))
    request_text: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    first_token_seconds: Mapped[float] = mapped_column(Float)
    latency_seconds: Mapped[float] = mapped_column(Float)
    finish_reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ResponseFeedback(Base):
    """A user's thumbs and/or score (in [0, 1]) on a served response; a later one replaces it."""

    __tablename__ = "response_feedback"
    __table_args__ = (
        UniqueConstraint("response_id", "user_key", name="one_feedback_per_user"),
        CheckConstraint(f"thumbs IS NULL OR thumbs IN {THUMBS}", name="feedback_thumbs"),
        CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="feedback_score"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("served_responses.id", ondelete="CASCADE"), index=True)
    user_key: Mapped[str] = mapped_column(String(64), default="")
    thumbs: Mapped[str | None] = mapped_column(String(4), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ResponsePreference(Base):
    """A user's choice between two served responses of one deployment (or a tie).

    ``pair_low_id``/``pair_high_id`` are the two responses in id order: one preference per
    (pair, user), whichever was preferred; a later one replaces it.
    """

    __tablename__ = "response_preferences"
    __table_args__ = (UniqueConstraint("pair_low_id", "pair_high_id", "user_key", name="one_preference_per_pair"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    preferred_id: Mapped[int] = mapped_column(ForeignKey("served_responses.id", ondelete="CASCADE"))
    other_id: Mapped[int] = mapped_column(ForeignKey("served_responses.id", ondelete="CASCADE"))
    pair_low_id: Mapped[int] = mapped_column(Integer)
    pair_high_id: Mapped[int] = mapped_column(Integer)
    user_key: Mapped[str] = mapped_column(String(64), default="")
    tie: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
