"""End to end in a real browser: Debian's Chromium driven by Playwright against the running app.

Creates the mood experiment from its YAML file, runs it, rates pairs with the keyboard,
opens Compare and downloads the HTML report. Screenshots of every page go to
``$STEERLAB_SCREENSHOTS`` (the README's pictures come from ``STEERLAB_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, LAUNCH_ARGS, dashboard, require_chromium, worker
from tests.conftest import MOOD_FILE, needs_models

require_chromium()
pytestmark = needs_models


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    # The dashboard only queues runs; a worker beside it runs them (as scripts/run.sh starts them).
    with dashboard(tmp_path / "e2e.db", tmp_path) as url, worker(tmp_path / "e2e.db", tmp_path):
        yield url


def test_create_run_rate_compare_report(app_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("STEERLAB_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a cold model load on a slow machine takes a while

        def go(name: str) -> None:
            page.get_by_role("link", name=name, exact=True).click()
            expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()

        def shot(name: str) -> None:
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / f"{name}.png"))

        # Experiments: create from the YAML file.
        page.goto(app_url)
        expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
        page.get_by_role("tab", name="Upload YAML").click()
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Experiment YAML file")
        uploader.locator("input[type=file]").set_input_files(str(MOOD_FILE))
        page.get_by_role("button", name="Create from file").click()
        expect(page.get_by_text("Created 'tinystories_mood' with 9 variants")).to_be_visible()
        page.get_by_role("tab", name="New").click()
        shot("experiments")

        go("Variants")
        expect(page.get_by_text("Add or edit a variant")).to_be_visible()
        expect(page.get_by_text("2 layers · hidden size 128")).to_be_visible()
        shot("variants")

        # Run: start and wait until every generation is stored.
        go("Run")
        page.get_by_role("button", name="Start run").click()
        expect(page.get_by_text("All generations are done")).to_be_visible(timeout=180_000)
        expect(page.get_by_text("270 / 270").first).to_be_visible()
        shot("run")

        go("Playground")
        expect(page.get_by_text("Unsteered", exact=True)).to_be_visible()
        shot("playground_story")  # docs/playground.png is a SmolLM2 chat: scripts/playground_screenshot.py

        # Rate: six votes with the keyboard shortcuts.
        go("Rate")
        page.get_by_label(re.compile("Your name")).fill("e2e-rater")
        page.get_by_role("button", name="Start rating").click()
        expect(page.get_by_role("button", name="A is better")).to_be_visible()
        shot("rate")
        for count, key in enumerate(["a", "b", "t", "x", "a", "b"], start=1):
            page.get_by_text("Keyboard: a = A is better").click()  # focus the page, not a text field
            page.keyboard.press(key)
            expect(page.get_by_text(f"You: {count} of 1080 pairs rated")).to_be_visible()
            expect(page.get_by_text(re.compile(r"A was '.+', B was '.+'"))).to_be_visible()

        go("Compare")
        expect(page.get_by_text(re.compile(r"6 votes from 1 rater \u00b7"))).to_be_visible()
        # Verdicts first: every variant against the baseline, with what it takes to decide.
        expect(page.get_by_text("Any two variants")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Alpha 0\.05 per family after Holm correction"))).to_be_visible()
        page.get_by_role("tab", name="Votes").click()
        expect(page.get_by_text("Win rate against the baseline").first).to_be_visible()
        page.get_by_role("tab", name="Verdicts").click()
        expect(page.get_by_text("Any two variants")).to_be_visible()
        shot("compare")

        # Report: download the HTML and check what it holds.
        go("Report")
        shot("report")
        with page.expect_download() as download_info:
            page.get_by_role("button", name="HTML report").click()
        report = Path(download_info.value.path()).read_text(encoding="utf-8")
        browser.close()

    assert "SteerLab report: tinystories_mood" in report
    assert "6 blind pairwise votes" in report
    assert report.count("<svg") >= 5, "charts are inlined as SVG"
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", report), "the report needs nothing from the network"
    for name in ("baseline", "sad_x2", "prompt_sad", "Bradley–Terry", "Reversibility"):
        assert name in report
    assert "This is a sad story. " in report or "This is a sad story." in report
