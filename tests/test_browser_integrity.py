"""The dashboard in a real browser on a store with several experiments: nothing lost or misfiled.

Each test reproduces a reported failure: repeated delete clicks, votes after switching
experiments and pages, two raters in two tabs, reloads and new tabs, half-filled
contrastive pairs, model text full of Markdown/HTML/links, and horizontal overflow.
Every vote and delete is checked in the store, against the experiment the page showed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import pytest
import yaml

from db.store import Store
from service.running import RunOptions, run_experiment_file
from tests.browser import WAIT_MS, chromium, dashboard, new_page, require_chromium, settled
from tests.conftest import MOOD_FILE, needs_models

require_chromium()
pytestmark = needs_models

EXPERIMENTS = ("tinystories_mood", "mood_cli", "csv_prompts")
HOSTILE = "hostile_[link](http://evil.example)"
HOSTILE_PROMPT = "**bold prompt** <img src=http://evil.example/p.png> [click](http://evil.example) :red[alarm]"
HOSTILE_OUTPUT = (
    "Sure <script>alert(1)</script><img src=x onerror=alert(2)>\n\n**not bold** [a link](http://evil.example) "
    "![pic](http://evil.example/i.png) $x^2$ <b>tag</b>\n\n# not a heading"
)
PAGES = ("", "variants", "run", "playground", "sweep", "rate", "compare", "adaptation", "report", "deploy")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small experiments and a hostile one, each run (2 prompts x 3 variants, greedy)."""
    folder = tmp_path_factory.mktemp("integrity")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    store = Store(str(folder / "team.db"))
    for name in (*EXPERIMENTS, HOSTILE):
        if name == HOSTILE:
            data["prompts"] = [HOSTILE_PROMPT, f"{HOSTILE_PROMPT} again"]
        path = folder / "exp.yaml"
        path.write_text(yaml.safe_dump({**data, "name": name}))
        run_experiment_file(store, path, RunOptions(device="cpu"))
    store.close()
    with sqlite3.connect(folder / "team.db") as conn:
        conn.execute(
            "UPDATE generations SET text = ? WHERE experiment_id = (SELECT id FROM experiments WHERE name = ?)",
            (HOSTILE_OUTPUT, HOSTILE),
        )
    return folder / "team.db"


@pytest.fixture(scope="module")
def app(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dashboard(db, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("STEERLAB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def votes(db: Path) -> list[tuple[str, str, int, int]]:
    """(experiment, rater, lower id, higher id) of every stored vote, in order."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT e.name, r.rater, r.pair_low_id, r.pair_high_id FROM ratings r "
            "JOIN experiments e ON e.id = r.experiment_id ORDER BY r.id"
        ).fetchall()


def stored_experiments(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [n for (n,) in conn.execute("SELECT name FROM experiments ORDER BY name")]


def rating_caption(page: Any) -> tuple[str, str]:
    """(rater, experiment) as the Rate page states them."""
    from playwright.sync_api import expect

    settled(page)  # the caption of the finished run, not of the one before
    caption = page.get_by_text(re.compile(r"^Rating as .+ · experiment .+ · outputs"))
    expect(caption).to_be_visible()
    match = re.match(r"Rating as (.+) · experiment (.+) · outputs", caption.inner_text())
    assert match is not None
    return match.group(1), match.group(2)


def vote_with_key(page: Any, key: str, db: Path) -> tuple[str, str]:
    """Vote on the pair on screen; returns (rater, experiment) the page showed, checked in the store."""
    from playwright.sync_api import expect

    rater, experiment = rating_caption(page)
    before = len(votes(db))
    page.get_by_text("Keyboard: a = A is better").click()  # focus the page, not a text field
    page.keyboard.press(key)
    wait_until(lambda: len(votes(db)) > before, "the vote to be stored")
    stored = votes(db)
    assert len(stored) == before + 1, "one key press, one vote"
    mine = sum(1 for v in stored if v[:2] == (experiment, rater))
    expect(page.get_by_text(f"You: {mine} of")).to_be_visible()  # the page has drawn the next pair
    assert stored[-1][:2] == (experiment, rater), "the vote is stored in the experiment the page showed"
    return rater, experiment


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def pick_experiment(page: Any, name: str) -> None:
    from playwright.sync_api import expect

    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_test_id("stSelectbox").click()
    page.get_by_role("option", name=name, exact=True).click()
    expect(page).to_have_url(re.compile(f"experiment={re.escape(name)}"))
    expect(page.get_by_text(re.compile(f"· experiment {re.escape(name)} ·"))).to_be_visible()


def test_votes_land_in_the_experiment_shown_across_switches_pages_reloads_and_tabs(
    app: str, browser: Any, db: Path
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(f"{app}/rate?experiment=tinystories_mood")
    page.get_by_label(re.compile("Your name")).fill("erin")
    page.get_by_role("button", name="Start rating").click()
    assert vote_with_key(page, "a", db) == ("erin", "tinystories_mood")
    assert "rater=erin" in page.url and "experiment=tinystories_mood" in page.url

    pick_experiment(page, "mood_cli")
    assert vote_with_key(page, "b", db) == ("erin", "mood_cli")
    assert vote_with_key(page, "t", db) == ("erin", "mood_cli")

    # Rate -> Run -> Rate keeps the experiment (and Run acts on it), and the rater.
    page.get_by_role("link", name="Run", exact=True).click()
    expect(page.get_by_role("heading", name="Run", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Experiment mood_cli\."))).to_be_visible()
    page.get_by_role("link", name="Rate", exact=True).click()
    assert vote_with_key(page, "x", db) == ("erin", "mood_cli")

    # A reload and a new tab with the same link open the same experiment and rater.
    page.reload()
    assert rating_caption(page) == ("erin", "mood_cli")
    other = page.context.new_page()
    other.goto(page.url)
    assert rating_caption(other) == ("erin", "mood_cli")
    assert vote_with_key(other, "a", db) == ("erin", "mood_cli")
    page.context.close()


def test_two_raters_in_two_tabs_on_two_experiments(app: str, browser: Any, db: Path) -> None:
    ann, bob = new_page(browser), new_page(browser)  # two browser sessions
    ann.goto(f"{app}/rate?experiment=tinystories_mood&rater=ann")
    bob.goto(f"{app}/rate?experiment=csv_prompts&rater=bob")
    for key in ("a", "b", "t"):
        assert vote_with_key(ann, key, db) == ("ann", "tinystories_mood")
        assert vote_with_key(bob, key, db) == ("bob", "csv_prompts")
    mine = [v for v in votes(db) if v[1] in ("ann", "bob")]
    assert len(mine) == 6 and len(set(mine)) == 6, "no pair stored twice"
    ann.context.close()
    bob.context.close()


def test_repeated_delete_clicks_delete_only_the_confirmed_experiment(app: str, browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(app)
    with sqlite3.connect(db) as conn:  # a fourth experiment to delete, so the others stay for other tests
        conn.execute("INSERT INTO experiments (name, description, model_id, spec_json, definition_hash, created_at) "
                     "SELECT 'doomed', description, model_id, replace(spec_json, '\"csv_prompts\"', '\"doomed\"'), "
                     "definition_hash, created_at FROM experiments WHERE name = 'csv_prompts'")  # fmt: skip
    page.reload()
    before = stored_experiments(db)
    page.get_by_role("tab", name="Delete").click()
    page.get_by_role("combobox", name="Experiment to delete").click()
    page.get_by_role("option", name="doomed", exact=True).click()
    page.get_by_text("Yes, delete 'doomed'").click()
    button = page.get_by_role("button", name="Delete experiment")
    button.click(click_count=3, delay=30)  # an impatient triple click
    # The first click deletes; a click that arrives after it says so and deletes nothing else.
    expect(page.get_by_text(re.compile(r"^(Deleted 'doomed' with its|'doomed' is already deleted)"))).to_be_visible()
    expect(page.get_by_role("button", name="Delete experiment")).to_have_count(0)  # the form is reset
    assert stored_experiments(db) == [n for n in before if n != "doomed"]
    page.context.close()


def test_empty_pair_rows_are_never_stored_as_text(app: str, browser: Any, db: Path) -> None:
    """The pairs table's empty cells reach the server as None/NaN, never as the text "nan".

    (Typing into the table's canvas grid cannot be driven reliably from Playwright; the
    half-filled row is checked on the service the page calls, in test_editing.py.)
    """
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(f"{app}/variants?experiment=mood_cli")
    expect(page.get_by_text("Add or edit a variant")).to_be_visible()
    page.get_by_role("tab", name="Contrastive pairs").click()
    page.get_by_label("Vector name").first.fill("empty")
    page.get_by_role("button", name="Save vector").click()
    expect(page.get_by_text("Vector 'empty' has no filled pair")).to_be_visible()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM vectors WHERE name = 'empty'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM experiments WHERE spec_json LIKE '%\"nan\"%'").fetchone() == (0,)
    page.context.close()


def test_every_page_shows_markdown_and_html_as_literal_text_and_fits_the_width(
    app: str, browser: Any, db: Path, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser)
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    for path in PAGES:
        page.goto(f"{app}/{path}?{urlencode({'experiment': HOSTILE, 'rater': 'mallory'})}")
        expect(page.get_by_role("heading").first).to_be_visible()
        settled(page)
        expect(page.get_by_role("combobox", name="Experiment", exact=True)).to_have_value(HOSTILE)
        assert page.locator("a[href*='evil.example'], img[src*='evil.example']").count() == 0, path
        overflow = page.evaluate(
            # A page with a chat input (the Playground) scrolls in stAppScrollToBottomContainer instead of stMain.
            "() => { const m = document.querySelector("
            '\'[data-testid="stMain"], [data-testid="stAppScrollToBottomContainer"]\');'
            " return [m.scrollWidth - m.clientWidth, document.documentElement.scrollWidth - window.innerWidth]; }"
        )
        assert max(overflow) <= 1, f"page '{path or 'experiments'}' overflows horizontally by {overflow} px"
        page.screenshot(path=str(shots / f"hostile_{path or 'experiments'}.png"), full_page=True)
        if path == "rate":
            expect(page.get_by_text("**not bold**", exact=False).first).to_be_visible()
            expect(page.get_by_text("**bold prompt**", exact=False).first).to_be_visible()
    assert not [u for u in requests if urlparse(u).hostname != "127.0.0.1"], "nothing is fetched from elsewhere"
    assert not dialogs, "no script from model text ran"
    page.context.close()
