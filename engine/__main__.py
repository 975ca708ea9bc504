"""``python -m engine``: the command line, the same as the ``steerlab`` console command.

The engine package itself never touches the store; the command line needs both, so it
lives in the service layer (``service.cli:main``) and this entry point only hands over to it.
"""

from __future__ import annotations

import sys


def _main() -> int:
    # Before anything imports huggingface_hub or transformers (they read the variables once).
    from service.offline import use_shared_hub_cache

    use_shared_hub_cache()
    from service.cli import main  # the service layer joins engine and store

    return main()


if __name__ == "__main__":
    sys.exit(_main())
