"""The Deploy page in a real browser: the kill switch stops an arm in the store at once, and stays stopped.

A real ``streamlit run`` on 127.0.0.1 with its own store holding a deployment with served
responses and feedback (as ``steerlab serve`` stores them); Chromium presses "Stop variant".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from db.store import Store
from service.access import LOCAL
from service.deployments import (
    ServedResponse,
    create_deployment,
    end_deployment,
    get_deployment,
    record_feedback,
    record_responses,
    user_key,
)
from service.editing import create_experiment
from tests.browser import chromium, dashboard, new_page, require_chromium, settled
from tests.conftest import needs_models

require_chromium()
pytestmark = needs_models


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "deploy.db"
    store = Store(str(path))
    create_experiment(
        store,
        {
            "name": "live_mood",
            "model": "raincandy-u/TinyStories-656K",
            "prompts": ["Once upon a time "],
            "vectors": {"sad": {"pairs": [["sad", "happy"]]}},
            "variants": [
                {"name": "baseline"},
                {"name": "sad", "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1}]},
            ],
        },
    )
    create_deployment(store, LOCAL, "mood-live", "live_mood", {"baseline": 50, "sad": 50})
    now = datetime.now(UTC)
    rows = [
        ServedResponse(f"chatcmpl-{i}", "live_mood", "mood-live", v, v, "", user_key(f"u{i}"), "chat", "[]", "story",
                       5, 12, 0.02, 0.3, "stop", now)
        for i, v in enumerate(["baseline", "sad"] * 6)
    ]  # fmt: skip
    record_responses(store, rows)
    for i in range(12):
        record_feedback(store, f"chatcmpl-{i}", thumbs="up" if i % 3 else "down", user=f"u{i}")
    store.close()
    return path


@pytest.fixture(scope="module")
def app(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dashboard(db, tmp_path_factory.mktemp("deploy_app")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def test_stop_variant_stops_the_arm_in_the_store_and_a_reload_keeps_it(
    app: str, browser: Any, db: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(f"{app}/deploy?experiment=live_mood")
    expect(page.get_by_role("heading", name="mood-live")).to_be_visible()
    settled(page)
    # sad's thumbs-up share, its interval and n, in the table's cells (a canvas grid: attached, not visible)
    expect(page.get_by_text("0.667 [0.300, 0.903] (n=6)").first).to_be_attached()
    page.get_by_role("button", name="Stop variant").click()
    expect(page.get_by_text("stopped: serves the baseline")).to_be_visible()
    expect(page.get_by_role("button", name="Resume variant")).to_be_visible()
    store = Store(str(db))
    try:
        arms = {a.variant: a.stopped for a in get_deployment(store, "mood-live").arms}
    finally:
        store.close()
    assert arms == {"baseline": False, "sad": True}
    page.reload()
    settled(page)
    expect(page.get_by_text("stopped: serves the baseline")).to_be_visible()
    expect(page.get_by_role("button", name="Stop variant")).to_have_count(0)
    shots = Path(os.environ.get("STEERLAB_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "deploy_stopped.png"), full_page=True)
    # Compare shows the same deployment on its Live tab.
    page.goto(f"{app}/compare?experiment=live_mood")
    page.get_by_role("tab", name="Live").click()
    expect(page.get_by_role("heading", name="mood-live (live)")).to_be_visible()
    expect(page.get_by_text("Keep collecting", exact=False).first).to_be_attached()
    page.screenshot(path=str(shots / "compare_live.png"), full_page=True)


def test_a_new_deployment_shows_its_name_literally_and_ended_ones_come_last(app: str, browser: Any, db: Path) -> None:
    import re

    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(f"{app}/deploy?experiment=live_mood")
    settled(page)
    # No escapes: the caption says the servers' real poll time, and no global version counter leaks in.
    expect(page.get_by_text("within a fraction of a second", exact=False)).to_be_visible()
    page.get_by_label(re.compile(r"^Name \(the")).fill("ui-dep")
    page.get_by_role("button", name="Create deployment").click()
    expect(page.get_by_text('clients send model="ui-dep"', exact=False)).to_be_visible()
    expect(page.get_by_text("ui\\-dep", exact=False)).to_have_count(0)
    expect(page.get_by_text("version 1 of this deployment", exact=False).last).to_be_attached()
    store = Store(str(db))
    try:
        end_deployment(store, LOCAL, "mood-live")
    finally:
        store.close()
    page.reload()
    settled(page)
    headings = page.get_by_role("heading").filter(has_text=re.compile("^(mood-live|ui-dep)$"))
    expect(headings).to_have_text(["ui-dep", "mood-live"])  # the ended one after the live one
    expect(page.get_by_text("ended", exact=True).first).to_be_visible()
    # ui-dep's two arms only: the arm lines (Markdown), not the figures tables' "state" cells, which the
    # data grid adds to the page whenever it has painted.
    arm_states = page.get_by_test_id("stMarkdownContainer").get_by_text("serving", exact=True)
    expect(arm_states).to_have_count(2)
    # The page says how feedback is attributed once an arm was stopped.
    expect(page.get_by_text("intention to treat: a stopped arm's users", exact=False).first).to_be_attached()
