"""Sign-in and roles in a real browser, against a real OpenID Connect provider on 127.0.0.1.

The provider is ``oidc-provider-mock`` (a complete OIDC server for tests); the dashboard is
configured for it through a secrets file, exactly as an operator configures theirs. A
rater sees and does only rating, as themselves; an analyst reads but cannot change or
delete; a rater link makes a new user a rater of one experiment.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from db.store import Store
from service.access import LOCAL, grant
from service.running import RunOptions, run_experiment_file
from tests.browser import chromium, dashboard, free_port, new_page, require_chromium, settled
from tests.conftest import MOOD_FILE, needs_models

require_chromium()
pytestmark = needs_models

OWNER, ANALYST, RATER = "olga@team.example", "anil@team.example", "rita@team.example"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("roles")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    data["reveal_after_vote"] = False
    store = Store(str(folder / "roles.db"))
    for name in ("team_mood", "secret_project"):
        path = folder / "exp.yaml"
        path.write_text(yaml.safe_dump({**data, "name": name}))
        run_experiment_file(store, path, RunOptions(device="cpu"))
    for user, role in ((OWNER, "owner"), (ANALYST, "analyst"), (RATER, "rater")):
        grant(store, LOCAL, "team_mood", user, role)
    store.close()
    return folder / "roles.db"


@pytest.fixture(scope="module")
def app(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from oidc_provider_mock import run_server_in_thread

    folder = tmp_path_factory.mktemp("signin")
    port = free_port()
    with run_server_in_thread() as provider:
        secrets = folder / "secrets.toml"
        secrets.write_text(
            "[auth]\n"
            f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            'cookie_secret = "a-test-cookie-secret-that-is-long-enough"\n'
            'client_id = "steerlab"\n'
            'client_secret = "steerlab-secret"\n'
            f'server_metadata_url = "http://localhost:{provider.server_port}/.well-known/openid-configuration"\n'
        )
        with dashboard(db, folder, ("--secrets.files", str(secrets)), port=port) as url:
            yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def signed_in(browser: Any, app: str, email: str) -> Any:
    """A new browser session signed in as ``email`` through the provider's own form."""
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(app)
    page.get_by_role("button", name="Sign in").click()
    page.locator("input[name=sub]").fill(email)
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_text(f"Signed in as {email}")).to_be_visible()
    return page


def nav_links(page: Any) -> list[str]:
    """The page titles in the sidebar's navigation (none when only one page is allowed)."""
    return [t.strip() for t in page.get_by_role("navigation", name="App pages").locator("a p").all_inner_texts()]


def votes(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT e.name, r.rater FROM ratings r JOIN experiments e ON e.id = r.experiment_id ORDER BY r.id"
        ).fetchall()


def test_a_rater_only_rates_and_only_as_themselves(app: str, browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, app, RATER)
    expect(page.get_by_role("heading", name="Rate", exact=True)).to_be_visible()
    assert nav_links(page) in ([], ["Rate"]), "a rater sees no other page"
    picker = page.get_by_role("combobox", name="Experiment", exact=True)
    expect(picker).to_have_value("team_mood")
    picker.click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert options == ["team_mood"], "a rater sees only the experiments they rate"

    # Compare, Report (the exports) and Experiments (delete) are not reachable by link either.
    for path in ("compare", "report", "experiments", "variants", "run"):
        page.goto(f"{app}/{path}?experiment=team_mood")
        expect(page.get_by_role("heading", name="Rate", exact=True)).to_be_visible()  # Streamlit: page not found
        assert page.get_by_role("button", name=re.compile("HTML report|Delete experiment|JSON export")).count() == 0
        assert page.get_by_role("heading", name=re.compile("^(Compare|Report|Experiments|Variants|Run)$")).count() == 0

    # The rater's name comes from the sign-in: a rater= in the link changes nothing.
    page.goto(f"{app}/?experiment=team_mood&rater={OWNER}")
    expect(page.get_by_text(f"Rating as {RATER} · experiment team_mood")).to_be_visible()
    before = len(votes(db))
    settled(page)
    page.get_by_text("Keyboard: a = A is better").click()
    page.keyboard.press("a")
    expect(page.get_by_text(re.compile("^Vote stored"))).to_be_visible()
    assert votes(db)[before:] == [("team_mood", RATER)]
    assert page.get_by_text(re.compile("A was '")).count() == 0, "variant names stay hidden from raters"
    page.context.close()


def test_an_analyst_reads_but_cannot_change_or_delete(app: str, browser: Any) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, app, ANALYST)
    links = nav_links(page)
    assert {"Compare", "Report", "Rate"} <= set(links)
    assert not {"Variants", "Run", "Sweep"} & set(links)
    page.goto(f"{app}/compare?experiment=team_mood")
    expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
    page.goto(f"{app}/?experiment=team_mood")
    expect(page.get_by_role("heading", name="Experiments", exact=True)).to_be_visible()
    page.get_by_role("tab", name="Delete").click()
    page.get_by_role("combobox", name="Experiment to delete").click()
    page.get_by_role("option", name="team_mood", exact=True).click()
    expect(page.get_by_text(re.compile("needs the owner role"))).to_be_visible()
    page.context.close()


def test_a_rater_link_makes_a_new_user_a_rater_of_that_experiment_only(app: str, browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    owner = signed_in(browser, app, OWNER)
    owner.goto(f"{app}/?experiment=team_mood")
    expect(owner.get_by_role("heading", name="Experiments", exact=True)).to_be_visible()
    expect(owner.get_by_role("tab", name="Team & audit log")).to_be_enabled()
    owner.get_by_role("tab", name="Team & audit log").click()
    link = owner.locator("code").filter(has_text="invite=").first.inner_text().strip()
    assert link.startswith(f"{app}/?") and "experiment=team_mood" in link and "invite=" in link
    owner.context.close()

    newbie = signed_in(browser, app, "nina@team.example")
    # Before the link: a member of nothing sees no experiment of anyone else.
    expect(newbie.get_by_text("No experiments yet: create one on the Experiments page.")).to_be_visible()
    newbie.goto(link)
    expect(newbie.get_by_text("Rating as nina@team.example · experiment team_mood")).to_be_visible()
    before = len(votes(db))
    settled(newbie)
    newbie.get_by_text("Keyboard: a = A is better").click()
    newbie.keyboard.press("b")
    expect(newbie.get_by_text(re.compile("^Vote stored"))).to_be_visible()
    assert votes(db)[before:] == [("team_mood", "nina@team.example")]
    newbie.goto(f"{app}/?experiment=secret_project")
    expect(newbie.get_by_text("Rating as nina@team.example · experiment team_mood")).to_be_visible()
    newbie.context.close()
