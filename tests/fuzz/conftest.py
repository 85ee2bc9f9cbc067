"""Hypothesis profiles: `default` keeps `make test` fast; `make fuzz` runs the `long` profile."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
