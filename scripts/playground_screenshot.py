"""Take docs/playground.png: a two-turn chat with SmolLM2 in the Playground, in headless Chromium.

    .venv/bin/python scripts/playground_screenshot.py [output.png] [variant]

Stores experiments/smollm2_tone.yaml in a throwaway store, starts the dashboard on it (as the
browser tests do), picks the steered variant, sends two messages and photographs the page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db.store import Store  # noqa: E402
from engine.experiment_file import load_experiment_file  # noqa: E402
from service.running import store_spec  # noqa: E402
from tests.browser import CHROMIUM, LAUNCH_ARGS, dashboard  # noqa: E402

EXAMPLE = ROOT / "experiments" / "smollm2_tone.yaml"
MESSAGES = ("Tell me about the ocean.", "Would you like to live by the sea?")
PATIENCE_MS = 300_000  # the first SmolLM2 load and two turns on a busy 2-core machine


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "playground.png"
    variant = sys.argv[2] if len(sys.argv) > 2 else "upbeat_l9_x4"
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        db = work / "shot.db"
        store = Store(str(db))
        store_spec(store, load_experiment_file(EXAMPLE), str(EXAMPLE))
        store.close()
        with dashboard(db, work) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1150})
            page.set_default_timeout(PATIENCE_MS)
            expect.set_options(timeout=PATIENCE_MS)
            page.goto(f"{url}/playground?experiment=smollm2_tone")
            page.get_by_text("Steered side", exact=True).wait_for()
            page.locator("[data-testid='stSelectbox']").filter(has_text="Steered side").click()
            page.get_by_role("option", name=variant, exact=True).click(timeout=30_000)
            box = page.get_by_placeholder("Message both sides")
            for turn, text in enumerate(MESSAGES, start=1):
                box.fill(text)
                box.press("Enter")
                expect(page.locator(".steerlab-output")).to_have_count(2 * turn)
                expect(page.get_by_text("Answering on both sides")).to_have_count(0)
            page.get_by_text("What the steered side is").click()
            page.evaluate("for (const e of document.querySelectorAll('*')) if (e.scrollTop > 0) e.scrollTop = 0")
            page.screenshot(path=str(output))
            browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
