"""``python -m rh_agents.demo``."""

from __future__ import annotations

from rh_agents.demo._app import main

if __name__ == "__main__":
    raise SystemExit(main())
