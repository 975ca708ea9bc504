"""`python -m engine report`: the dashboard's escaped, self-contained HTML report, written to a file.

The stored experiment carries Markdown, HTML and links in its prompt, a variant's prefix, its
description and an output; opened in headless Chromium, the written file must show them as
literal text, run nothing and fetch nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from db import repository as repo
from db.store import Store
from service.cli import main
from service.report import html_report
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, needs_models

pytestmark = needs_models

SCRIPT = "<script>alert(1)</script>"
IMAGE = "<img src=http://example.com/x.png onerror=alert(2)>"
LINK = "[link](http://evil.example)"
BOLD = "**bold**"
HEADING = "# heading"
PAYLOADS = (SCRIPT, IMAGE, LINK, BOLD, HEADING)
CRAFTED_OUTPUT = " ".join(PAYLOADS)
CRAFTED_PROMPT = f"Once upon a time {SCRIPT} {IMAGE} {LINK} {BOLD} and"
CRAFTED_PREFIX = f"{HEADING} <b onmouseover=alert(3)>x</b> "
NAME = "crafted"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def crafted_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run whose prompt, a prefix, the description and one output hold the payloads."""
    folder = tmp_path_factory.mktemp("report")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data.update(
        name=NAME,
        description=f"{HEADING}\n{SCRIPT} {LINK}",
        prompts=[CRAFTED_PROMPT, data["prompts"][0]],
        variants=[
            v for v in data["variants"] if v["name"] in ("baseline", "sad_x2")
        ]  # a steering variant, for its vector and charts
        + [{"name": "prompt_crafted", "prefix": CRAFTED_PREFIX}],
    )
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    path = folder / "crafted.yaml"
    path.write_text(yaml.safe_dump(data))
    db = folder / "steerlab.db"
    store = Store(str(db))
    try:
        run_experiment_file(store, str(path), RunOptions(batch_size=8, device="cpu"))
        with store.session() as session:
            experiment = repo.find_experiment(session, NAME)
            assert experiment is not None
            generation = repo.generations_of(session, experiment.id)[0]
            generation.text = CRAFTED_OUTPUT
    finally:
        store.close()
    return db


def _without_timestamp(text: str) -> str:
    return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "generated <time>", text)


def test_report_writes_the_dashboards_html(
    crafted_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "r.html"
    assert main(["report", NAME, "--format", "html", "-o", str(target), "--db", str(crafted_db)]) == 0
    assert f"Wrote HTML report of '{NAME}' to {target}." in capsys.readouterr().out
    written = target.read_text(encoding="utf-8")
    assert written.startswith("<!DOCTYPE html>"), "an HTML page, not the CSV export"
    store = Store(str(crafted_db))
    try:
        served = html_report(store, NAME)
    finally:
        store.close()
    assert _without_timestamp(written) == _without_timestamp(served), "the same file as the dashboard's Report page"
    for payload in (SCRIPT, IMAGE):
        assert payload not in written, "markup is escaped"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in written


def test_report_without_its_folder_or_experiment(
    crafted_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder" / "r.html"
    assert main(["report", NAME, "-o", str(missing), "--db", str(crafted_db)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-folder" in err and "does not exist" in err and "-o" in err and len(err.splitlines()) == 1
    assert not missing.parent.exists()

    assert main(["report", "nobody", "-o", str(tmp_path / "r.html"), "--db", str(crafted_db)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nobody'" in err and NAME in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_report_is_inert_in_a_browser(crafted_db: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the browser tests: install Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium); the report cannot be opened")
    from playwright.sync_api import Dialog, sync_playwright

    target = tmp_path / "r.html"
    assert main(["report", NAME, "--format", "html", "-o", str(target), "--db", str(crafted_db)]) == 0
    url = target.as_uri()
    dialogs: list[str] = []
    requests: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.on("dialog", on_dialog)
            page.on("request", lambda request: requests.append(request.url))
            page.route(lambda u: u != url, lambda route: route.abort())  # nothing may leave the file
            page.goto(url)
            page.wait_for_load_state("load")
            page.mouse.move(5, 5)
            for handle in page.query_selector_all("b, td, p"):  # a mouse over every cell: no handler fires
                handle.hover()
            page.wait_for_timeout(300)
            body = page.inner_text("body")
            counts = page.evaluate(
                "() => ({scripts: document.scripts.length, images: document.images.length,"
                " links: document.querySelectorAll('a[href], link[href]').length})"
            )
        finally:
            browser.close()
    assert dialogs == [], "no script of the stored texts ran"
    assert [u for u in requests if u != url] == [], "the report fetches nothing"
    assert counts == {"scripts": 0, "images": 0, "links": 0}
    for text in (*PAYLOADS, CRAFTED_OUTPUT, CRAFTED_PROMPT.strip(), CRAFTED_PREFIX.strip()):
        assert text in body, f"{text!r} is shown as literal text"
