"""Live deployments in the store: traffic split, kill switch, served responses, feedback, upgrade.

No model is needed: deployments are rows of the store, and assignment is a pure hash. The
HTTP side (tests/test_serve_openai.py) serves them through the real server.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from scipy import stats as scipy_stats
from sqlalchemy import text

from db.migrate import _config, head_revision
from db.store import Store
from engine.errors import SteerLabError
from engine.traffic import Arm, TrafficSplit, check_weights, parse_weights, user_fraction
from service import audit
from service.access import LOCAL, AccessDenied, Identity, grant
from service.deployments import (
    ServedResponse,
    assign,
    create_deployment,
    deployments_version,
    end_deployment,
    get_deployment,
    list_deployments,
    record_feedback,
    record_preference,
    record_responses,
    resume_variant,
    set_weights,
    stop_variant,
    user_key,
)
from service.editing import create_experiment
from service.live_comparison import live_comparison

pytestmark = pytest.mark.both_stores

USERS = [f"user-{i}" for i in range(20_000)]  # a fixed set: the proportions test cannot flake


def experiment(store: Store, name: str = "live_mood", trained: bool = False) -> None:
    variants: list[dict[str, object]] = [
        {"name": "baseline"},
        {"name": "sad", "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1.0}]},
        {"name": "prompt_sad", "system": "Write a sad story."},
    ]
    extra: dict[str, object] = {}
    if trained:
        variants.append({"name": "tuned", "train": {"method": "lora", "epochs": 1}})
        extra["training_examples"] = ["The sky is blue."]
    create_experiment(
        store,
        {
            "name": name,
            "model": "raincandy-u/TinyStories-656K",
            "prompts": ["Once upon a time "],
            "vectors": {"sad": {"pairs": [["sad", "happy"]]}},
            "variants": variants,
            **extra,
        },
    )


def response(rid: str, deployment: str | None, served: str | None, user: str = "", **kw: object) -> ServedResponse:
    values: dict[str, object] = {
        "response_id": rid,
        "experiment": "live_mood",
        "deployment": deployment,
        "assigned_variant": served,
        "served_variant": served,
        "steering_json": "",
        "user_key": user_key(user),
        "endpoint": "chat",
        "request_text": '[{"role": "user", "content": "hi"}]',
        "response_text": "Once upon a time",
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "first_token_seconds": 0.01,
        "latency_seconds": 0.05,
        "finish_reason": "stop",
        "created_at": datetime.now(UTC),
    }
    values.update(kw)
    return ServedResponse(**values)  # type: ignore[arg-type]


def test_assignment_is_sticky_proportional_and_a_stopped_arm_serves_the_baseline() -> None:
    split = TrafficSplit("mood", "baseline", (Arm("baseline", 50, False), Arm("sad", 30, False), Arm("x", 20, False)))
    counts = {"baseline": 0, "sad": 0, "x": 0}
    for user in USERS:
        counts[split.assign(user).assigned] += 1
    for variant, share in (("baseline", 0.5), ("sad", 0.3), ("x", 0.2)):
        # A binomial count lies within 4 standard deviations of its mean (a fixed user set: no flake).
        sd = math.sqrt(len(USERS) * share * (1 - share))
        assert abs(counts[variant] - len(USERS) * share) < 4 * sd, counts
    assert all(split.assign(u) == split.assign(u) for u in USERS[:200]), "sticky per user"
    # Another deployment splits the same users independently.
    other = [user_fraction("other", u) < 0.5 for u in USERS[:4000]]
    here = [user_fraction("mood", u) < 0.5 for u in USERS[:4000]]
    agree = sum(a == b for a, b in zip(other, here, strict=True)) / 4000
    assert abs(agree - 0.5) < 0.04
    stopped = TrafficSplit("mood", "baseline", (Arm("baseline", 50, False), Arm("sad", 30, True), Arm("x", 20, False)))
    for user in USERS[:500]:
        before, after = split.assign(user), stopped.assign(user)
        assert after.assigned == before.assigned, "the kill switch keeps the assignment"
        assert after.served == ("baseline" if before.assigned == "sad" else before.assigned)
    # Without a user: random, yet in proportion.
    anonymous = [split.assign(None).assigned for _ in range(3000)]
    assert scipy_stats.chisquare([anonymous.count(v) for v in counts], [1500, 900, 600]).pvalue > 1e-4
    zero = TrafficSplit("mood", "baseline", (Arm("baseline", 1, False), Arm("sad", 0, False)))
    assert {zero.assign(u).assigned for u in USERS[:300]} == {"baseline"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("baseline=50,sad", "is not VARIANT=NUMBER"),
        ("baseline=abc", "not a number"),
        ("baseline=-1", "finite numbers of 0 or more"),
        ("baseline=0,sad=0", "Every weight is 0"),
        ("baseline=1,nope=1", "'nope', which the experiment lacks"),
        ("baseline=nan", "finite numbers"),
        ("baseline=1,baseline=2", "two weights"),
        ("", "No weights"),
    ],
)
def test_bad_weights_get_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(SteerLabError) as caught:
        check_weights(parse_weights(text), ["baseline", "sad"])
    message = str(caught.value)
    assert fragment in message and message.endswith(".") and "\n" not in message, message


def test_deployment_lifecycle_is_audited_versioned_and_permissioned(store: Store) -> None:
    experiment(store)
    v0 = deployments_version(store)
    made = create_deployment(store, LOCAL, "mood-prod", "live_mood", {"baseline": 50, "sad": 50})
    assert made.baseline == "baseline" and not made.show_variant and made.live
    assert [(a.variant, a.weight, a.stopped) for a in made.arms] == [("baseline", 50, False), ("sad", 50, False)]
    v1 = deployments_version(store)
    assert v1 != v0
    with pytest.raises(SteerLabError, match="already exists"):
        create_deployment(store, LOCAL, "mood-prod", "live_mood", {"baseline": 1})
    with pytest.raises(SteerLabError, match="not usable"):
        create_deployment(store, LOCAL, "a/b", "live_mood", {"baseline": 1})
    changed = set_weights(store, LOCAL, "mood-prod", {"baseline": 80, "prompt_sad": 20})
    assert [(a.variant, a.weight) for a in changed.arms] == [("baseline", 80), ("sad", 0), ("prompt_sad", 20)]
    assert changed.version > made.version and deployments_version(store) != v1
    stopped = stop_variant(store, LOCAL, "mood-prod", "prompt_sad")
    assert stopped.arms[2].stopped and get_deployment(store, "mood-prod").arms[2].stopped
    assert stop_variant(store, LOCAL, "mood-prod", "prompt_sad").version == stopped.version, "twice: no change"
    with pytest.raises(SteerLabError, match="is the baseline"):
        stop_variant(store, LOCAL, "mood-prod", "baseline")
    with pytest.raises(SteerLabError, match="has no arm 'nope'"):
        stop_variant(store, LOCAL, "mood-prod", "nope")
    served = {assign(stopped, u).served for u in USERS[:300]}
    assert served == {"baseline"}, "sad has weight 0 and prompt_sad is stopped"
    assert not resume_variant(store, LOCAL, "mood-prod", "prompt_sad").arms[2].stopped
    # Roles: an analyst reads, only an owner changes.
    grant(store, LOCAL, "live_mood", "ana@x.example", "analyst")
    analyst = Identity("ana@x.example", signed_in=True)
    with pytest.raises(AccessDenied, match="needs the owner role"):
        stop_variant(store, analyst, "mood-prod", "sad")
    ended = end_deployment(store, LOCAL, "mood-prod")
    assert not ended.live and [d.name for d in list_deployments(store, "live_mood")] == ["mood-prod"]
    with pytest.raises(SteerLabError, match="has ended"):
        set_weights(store, LOCAL, "mood-prod", {"baseline": 1})
    actions = [e.action for e in audit.recent(store, "live_mood") if e.action != "member"]
    assert actions[:5] == ["ended deployment", "resumed variant", "stopped variant", "changed", "deployed"]
    with pytest.raises(SteerLabError, match="No deployment named 'gone'"):
        get_deployment(store, "gone")


def test_trained_variants_and_a_missing_baseline_are_refused(store: Store) -> None:
    experiment(store, "no_base", trained=True)
    with pytest.raises(SteerLabError, match=r"'tuned' is a lora variant.*leave it out of the weights"):
        create_deployment(store, LOCAL, "d", "no_base", {"baseline": 1, "tuned": 1})
    with pytest.raises(SteerLabError, match="choose another baseline"):
        create_deployment(store, LOCAL, "d", "no_base", {"sad": 1}, baseline="tuned")
    with pytest.raises(SteerLabError, match="'nope' is not a variant"):
        create_deployment(store, LOCAL, "d", "no_base", {"sad": 1}, baseline="nope")
    with pytest.raises(SteerLabError, match=r"^Baseline 'prompt_sad' has no weight.*prompt_sad=50"):
        create_deployment(store, LOCAL, "d", "no_base", {"sad": 1}, baseline="prompt_sad")
    with pytest.raises(SteerLabError, match="Baseline 'baseline' has no weight"):
        create_deployment(store, LOCAL, "d", "no_base", {"sad": 1})
    made = create_deployment(
        store, LOCAL, "d", "no_base", {"sad": 1, "prompt_sad": 1}, baseline="prompt_sad", show_variant=True
    )
    assert made.baseline == "prompt_sad" and made.show_variant
    assert "prompt_sad" in {a.variant for a in made.arms}, "the baseline is always an arm"


def test_responses_are_stored_once_and_feedback_is_replaced(store: Store, tmp_path: Path) -> None:
    experiment(store)
    create_deployment(store, LOCAL, "mood", "live_mood", {"baseline": 1, "sad": 1})
    batch = [response("chatcmpl-1", "mood", "baseline", "u1"), response("chatcmpl-2", "mood", "sad", "u2")]
    record_responses(store, batch)
    record_responses(store, [*batch, response("chatcmpl-3", "mood", "sad", "u3")])  # a retry after a crash
    free = response("cmpl-4", None, None, steering_json='{"vector": "sad"}', endpoint="completions")
    record_responses(store, [free])
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT response_id FROM served_responses ORDER BY id"))]
        assert ids == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3", "cmpl-4"]
        assert conn.execute(text("SELECT count(*) FROM served_responses WHERE user_key = 'u1'")).scalar() == 0
    with pytest.raises(SteerLabError, match="lacks"):
        record_responses(store, [response("chatcmpl-9", "mood", "nope")])
    record_feedback(store, "chatcmpl-2", thumbs="up", user="u2")
    record_feedback(store, "chatcmpl-2", thumbs="down", score=0.25, user="u2", comment="changed my mind")
    # Feedback counts for the user the response was served to: nobody else may add to their numbers.
    with pytest.raises(SteerLabError, match=r"^Response 'chatcmpl-2' was served to a different user; only the user"):
        record_feedback(store, "chatcmpl-2", score=1.0, user="someone else")
    with pytest.raises(SteerLabError, match="'chatcmpl-2' was served to a different user"):
        record_feedback(store, "chatcmpl-2", score=1.0)  # anonymous feedback on a user's response
    with pytest.raises(SteerLabError, match="served without a user, so it takes feedback only without one"):
        record_feedback(store, "cmpl-4", score=1.0, user="u2")
    record_feedback(store, "cmpl-4", score=1.0)
    record_feedback(store, "cmpl-4", score=0.0)  # a second anonymous rater replaces, never adds
    with store.engine.connect() as conn:
        rows = [
            tuple(r) for r in conn.execute(text("SELECT thumbs, score, comment FROM response_feedback ORDER BY id"))
        ]
    assert rows == [("down", 0.25, "changed my mind"), (None, 0.0, "")]
    for kwargs, fragment in (
        ({"thumbs": "sideways"}, 'neither "up" nor "down"'),
        ({"score": 1.5}, "between 0 and 1"),
        ({"score": math.nan}, "between 0 and 1"),
        ({}, "neither"),
    ):
        with pytest.raises(SteerLabError, match=fragment):
            record_feedback(store, "chatcmpl-1", **kwargs)
    with pytest.raises(SteerLabError, match="No served response has id 'nope'"):
        record_feedback(store, "nope", thumbs="up")
    record_responses(store, [response("chatcmpl-5", "mood", "baseline", "u2")])
    record_preference(store, "chatcmpl-2", "chatcmpl-5", user="u2")
    record_preference(store, "chatcmpl-5", "chatcmpl-2", user="u2")  # replaces the first
    # A preference comes from the user who was served both responses.
    with pytest.raises(SteerLabError, match=r"^Response 'chatcmpl-2' was served to a different"):
        record_preference(store, "chatcmpl-2", "chatcmpl-5", user="u9")
    with pytest.raises(SteerLabError, match="'chatcmpl-1' was served to a different user"):
        record_preference(store, "chatcmpl-2", "chatcmpl-1", user="u2")
    with pytest.raises(SteerLabError, match="not served by one deployment"):
        record_preference(store, "chatcmpl-1", "cmpl-4")
    comparison = live_comparison(store, "mood")
    assert dict(comparison.preferences)["sad"].losses == 1, "the second preference replaced the first"


def test_a_store_at_0007_with_data_upgrades_keeping_every_row(tmp_path: Path) -> None:
    db = tmp_path / "r7.db"
    with sqlite3.connect(db) as conn:
        conn.executescript((Path(__file__).parent / "data" / "store_r0003.sql").read_text())
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0007")
    engine.dispose()
    with sqlite3.connect(db) as conn:
        (experiment_id,) = conn.execute("SELECT id FROM experiments LIMIT 1").fetchone()
        generation_ids = [r[0] for r in conn.execute("SELECT id FROM generations ORDER BY id LIMIT 2")]
        conn.execute(
            "INSERT INTO judgements (experiment_id, judge, left_generation_id, right_generation_id, choice, answer,"
            " created_at) VALUES (?, 'j', ?, ?, 'left', 'A', '2026-01-01')",
            (experiment_id, *generation_ids),
        )
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        before = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    assert sum(len(rows) for rows in before.values()) > 50
    Store(str(db)).close()
    with sqlite3.connect(db) as conn:
        after = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in before}
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
        assert conn.execute("SELECT count(*) FROM deployments").fetchone() == (0,)
    before.pop("alembic_version"), after.pop("alembic_version")
    before.pop("meta"), after.pop("meta")
    assert after == before


def test_the_deploy_command_creates_switches_and_shows(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    experiment(store)
    db = ["--db", store.url]
    assert main(["deploy", *db, "create", "mood", "--experiment", "live_mood", "--weights", "baseline=50,sad=50"]) == 0
    assert 'model="mood"' in capsys.readouterr().out
    assert main(["deploy", *db, "stop-variant", "mood", "sad"]) == 0
    assert "sad=50 (stopped)" in capsys.readouterr().out
    assert get_deployment(store, "mood").arms[1].stopped
    record_responses(store, [response("c1", "mood", "baseline", "u1"), response("c2", "mood", "sad", "u2")])
    record_feedback(store, "c1", thumbs="up", user="u1")
    assert main(["deploy", *db, "show", "mood"]) == 0
    shown = capsys.readouterr().out
    assert "baseline (baseline)" in shown and "stopped" in shown and "1.000 [" in shown and "(n=1)" in shown
    assert "Keep collecting" in shown and "holm-corrected over 3 comparisons" in shown
    assert main(["deploy", *db, "list"]) == 0
    assert "mood" in capsys.readouterr().out
    assert main(["deploy", *db, "weights", "mood", "baseline=50,sad=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Weight of 'sad' is -1") and err.count("\n") == 1
    assert main(["deploy", *db, "end", "mood"]) == 0
    assert "ended" in capsys.readouterr().out


def test_names_that_reach_something_else_and_null_arm_controls_are_refused(store: Store) -> None:
    experiment(store)
    with pytest.raises(SteerLabError, match=r"^Deployment name 'live_mood' is the name of an experiment.*\.$"):
        create_deployment(store, LOCAL, "live_mood", "live_mood", {"baseline": 1})
    create_experiment(
        store,
        {
            "name": "with_controls",
            "model": "raincandy-u/TinyStories-656K",
            "prompts": ["Once upon a time "],
            "vectors": {"sad": {"pairs": [["sad", "happy"]]}},
            "variants": [
                {"name": "baseline"},
                {
                    "name": "sad",
                    "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1.0}],
                    "null_arms": True,
                },
            ],
        },
    )
    for control in ("sad (random)", "sad (flipped)"):
        with pytest.raises(SteerLabError, match=r"is a null-arm control of 'sad'.*not for real users"):
            create_deployment(store, LOCAL, "c", "with_controls", {"baseline": 1, control: 1})
        with pytest.raises(SteerLabError, match="null-arm control"):
            create_deployment(store, LOCAL, "c", "with_controls", {control: 1}, baseline=control)
    create_deployment(store, LOCAL, "c", "with_controls", {"baseline": 1, "sad": 1})
    with pytest.raises(SteerLabError, match="null-arm control"):
        set_weights(store, LOCAL, "c", {"baseline": 1, "sad (random)": 1})


def test_versions_count_per_deployment_and_the_servers_stamp_still_moves(store: Store) -> None:
    experiment(store)
    create_deployment(store, LOCAL, "one", "live_mood", {"baseline": 1, "sad": 1})
    for weight in (2, 3, 4):
        set_weights(store, LOCAL, "one", {"baseline": 1, "sad": weight})
    stamp = deployments_version(store)
    assert create_deployment(store, LOCAL, "two", "live_mood", {"baseline": 1}).version == 1
    assert deployments_version(store) != stamp
    stamp = deployments_version(store)
    assert set_weights(store, LOCAL, "two", {"baseline": 2}).version == 2  # below "one"'s 4: the stamp moves anyway
    assert deployments_version(store) != stamp


def test_the_family_is_fixed_by_the_arms_and_feedback_is_by_assigned_arm(store: Store) -> None:
    experiment(store)
    create_deployment(store, LOCAL, "fam", "live_mood", {"baseline": 1, "sad": 1, "prompt_sad": 1})
    empty = live_comparison(store, "fam")
    assert empty.family == 6 and not empty.differences and not empty.preferences
    from service.live_comparison import summary, traffic_rows

    assert (
        summary(empty)
        == "No feedback or preferences yet on the arms (sad, prompt_sad) or the baseline (baseline): nothing to compare yet."
    )
    rows = [response(f"b{i}", "fam", "baseline", f"b{i}") for i in range(30)]
    rows += [response(f"s{i}", "fam", "sad", f"s{i}") for i in range(30)]
    # One sad user was switched to the baseline by the kill switch: they still count for sad.
    rows.append(response("s-stopped", "fam", "baseline", "s-late", assigned_variant="sad"))
    record_responses(store, rows)
    for i in range(30):
        record_feedback(store, f"b{i}", thumbs="down" if i % 10 else "up", user=f"b{i}")
        record_feedback(store, f"s{i}", thumbs="up" if i % 10 else "down", user=f"s{i}")
    record_feedback(store, "s-stopped", thumbs="up", user="s-late")
    before = live_comparison(store, "fam")
    (sad_thumbs,) = [d for arm, d in before.differences if arm == "sad"]
    assert before.family == 6 and sad_thumbs.arm.n == 31 and sad_thumbs.baseline.n == 30
    assert sad_thumbs.adjusted_p_value == pytest.approx(min(1.0, 6 * sad_thumbs.raw_p_value))
    assert "over 6 comparisons" in sad_thumbs.verdict.sentence
    assert before.thumbs_interval == "Wilson" and "[95% Wilson]" in traffic_rows(before)[0][10]
    # Scores on another arm arrive: the thumbs verdict on sad keeps its family and its p-value.
    record_responses(store, [response(f"p{i}", "fam", "prompt_sad", f"p{i}") for i in range(4)])
    for i in range(4):
        record_feedback(store, f"p{i}", score=0.5 + 0.1 * (i % 2), user=f"p{i}")
    after = live_comparison(store, "fam")
    (again,) = [d for arm, d in after.differences if arm == "sad" and d.metric == "thumbs_up"]
    assert after.family == 6 and again.adjusted_p_value == sad_thumbs.adjusted_p_value
    assert again.verdict == sad_thumbs.verdict
    # One user with mixed thumbs: every share of the deployment switches to the t interval over users.
    record_responses(store, [response("b-again", "fam", "baseline", "b0")])
    record_feedback(store, "b-again", thumbs="down", user="b0")
    mixed = live_comparison(store, "fam")
    assert mixed.thumbs_interval == "t over users' shares"
    assert "[95% t over users' shares]" in traffic_rows(mixed)[0][10]
    assert "over 6 comparisons" in summary(mixed) and "intention to treat" in summary(mixed)
    ended = live_comparison(store, end_deployment(store, LOCAL, "fam").name)
    assert {r[2] for r in traffic_rows(ended)[1:]} == {"ended"}
    alone = create_deployment(store, LOCAL, "alone", "live_mood", {"baseline": 1})
    assert summary(live_comparison(store, alone.name)) == (
        "The deployment has no arm besides its baseline (baseline): nothing to compare."
    )


def test_abandoned_responses_count_as_served_but_not_in_tokens_or_latency(store: Store) -> None:
    experiment(store)
    create_deployment(store, LOCAL, "quit", "live_mood", {"baseline": 1, "sad": 1})
    record_responses(
        store,
        [
            response("done", "quit", "sad", "u1", completion_tokens=10, latency_seconds=1.0),
            response("left", "quit", "sad", "u2", completion_tokens=2, latency_seconds=0.1, finish_reason="cancelled"),
        ],
    )
    (sad,) = [v for v in live_comparison(store, "quit").variants if v.variant == "sad"]
    assert (sad.served, sad.abandoned, sad.completion_tokens) == (2, 1, 10.0)
    assert sad.latency_p50 == sad.latency_p95 == 1.0
