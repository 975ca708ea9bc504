"""Where the offline model cache is, for every entry point (command line, dashboard)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# The offline model cache a checkout may have beside it (what scripts/env.sh points at).
SHARED_HUB_CACHE = Path(__file__).resolve().parent.parent.parent / "shared" / "hf-cache" / "hub"


def use_shared_hub_cache(environ: MutableMapping[str, str] = os.environ) -> None:
    """Default the Hugging Face cache to ``../shared/hf-cache/hub`` when it exists, offline.

    Why here: huggingface_hub and transformers read HF_HUB_CACHE and HF_HUB_OFFLINE once,
    when they are first imported, and until now only scripts/env.sh set them, so the README's
    ``.venv/bin/python -m engine run ...`` from a fresh clone without network searched the
    empty default cache and spent about a minute in download retries. Like
    ``os.environ.setdefault``, a value the user set always wins: a user who chose their own
    cache (HF_HUB_CACHE, or the older HUGGINGFACE_HUB_CACHE or HF_HOME) keeps it and keeps
    their own download setting, since that cache may need the network to fill.
    """
    if not SHARED_HUB_CACHE.is_dir():
        return
    if any(environ.get(name) for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")):
        return
    environ["HF_HUB_CACHE"] = str(SHARED_HUB_CACHE)
    environ.setdefault("HF_HUB_OFFLINE", "1")
