"""SteerLab dashboard: ``streamlit run dashboard/app.py``.

Pages only lay out widgets and call the service layer (no SQL, no torch here). This file
is the frame every page runs in: who is signed in, which experiment is current, and which
pages their role there allows. The pages live in ``views/``, not ``pages/``: Streamlit
treats a ``pages/`` folder as old-style pages and would run a linked page (a rater link
to /rate) without this frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

from service.offline import use_shared_hub_cache  # noqa: E402

# Before anything loads huggingface_hub: `streamlit run` started by hand (not by
# scripts/run.sh) finds the offline model cache beside the clone, as the CLI does.
use_shared_hub_cache()

from dashboard.auth import exposed_without_sign_in  # noqa: E402
from dashboard.common import experiment_names, identity, join_from_link, role_here, sidebar  # noqa: E402
from dashboard.text import md  # noqa: E402
from service import USER_ERRORS  # noqa: E402
from service.access import at_least  # noqa: E402


@st.cache_resource
def _icon() -> Image.Image:
    """The tab icon, drawn here: a ":material/..." icon makes browsers fetch it from Google's font CDN."""
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for x, knob in ((7, 20), (16, 9), (25, 16)):  # three sliders: the behaviour knob
        draw.line([(x, 4), (x, 28)], fill=(120, 120, 130, 255), width=2)
        draw.ellipse([(x - 4, knob - 4), (x + 4, knob + 4)], fill=(255, 75, 75, 255))
    return image


st.set_page_config(page_title="SteerLab", page_icon=_icon(), layout="wide")

# (file, title, icon, the least role that may open it)
PAGES = [
    ("views/experiments.py", "Experiments", ":material/science:", "analyst"),
    ("views/variants.py", "Variants", ":material/tune:", "owner"),
    ("views/run.py", "Run", ":material/play_circle:", "owner"),
    ("views/playground.py", "Playground", ":material/toggle_on:", "analyst"),
    ("views/sweep.py", "Sweep", ":material/grid_on:", "owner"),
    ("views/rate.py", "Rate", ":material/thumbs_up_down:", "rater"),
    ("views/compare.py", "Compare", ":material/bar_chart:", "analyst"),
    ("views/deploy.py", "Deploy", ":material/rocket_launch:", "analyst"),
    ("views/judge.py", "Judge", ":material/gavel:", "analyst"),
    ("views/adaptation.py", "Adaptation", ":material/balance:", "analyst"),
    ("views/report.py", "Report", ":material/description:", "analyst"),
]

who = identity()
join_from_link()
role = role_here()
if role is None and not experiment_names():
    role = "owner"  # nothing visible yet: a signed-in user may create their first experiment
allowed = [p for p in PAGES if at_least(role, p[3])] or [p for p in PAGES if p[1] == "Rate"]
pages = [st.Page(file, title=title, icon=icon, default=i == 0) for i, (file, title, icon, _) in enumerate(allowed)]
page = st.navigation(pages)
if exposed_without_sign_in():
    st.warning(
        "This dashboard is reachable from the network and nobody signs in: anyone who can open it can rate, "
        "export and delete. Configure sign-in (see the README) or serve it on 127.0.0.1.",
        icon=":material/warning:",
    )
# The picker comes first, so every page reads the experiment it shows; a page whose action
# changes the list of experiments reruns, and the picker then lists the change.
sidebar()
try:
    page.run()
except USER_ERRORS as exc:
    # A page's own actions show their errors in place; this catches what a page did not
    # expect (a stored definition this SteerLab no longer accepts, a store gone away).
    st.error(md(exc), icon=":material/error:")
