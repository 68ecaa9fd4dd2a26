"""Suite-wide fixtures. Service fixtures (Postgres, Redis) live in tests/services.py and the
per-area conftest files; see tests/services.py for the skip-or-fail rule."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Profiles: "default" for the suite; "fuzz" for the long fuzz script (tests/tools/fuzz.py).
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("fuzz", parent=settings.get_profile("default"), max_examples=100_000)
settings.load_profile(os.environ.get("WAFLEET_HYPOTHESIS_PROFILE", "default"))

pytest_plugins = ["tests.fixtures"]
