"""Hypothesis profiles for the fuzz tests.

`fuzz` (the default here, used by `make test`): a few hundred examples per test, derandomized so
every CI run tries the same inputs and a failure reproduces exactly; no per-example deadline
(the machine running the suite is shared and timings vary).

`long` (`make fuzz`, i.e. `pytest tests/fuzz --hypothesis-profile=long`): random (not derandomized)
and 10x more examples per test, bounded so the whole run stays within about ten minutes on two
cores. Its findings, and the crashes it found, are recorded in docs/fuzzing.md.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_SHARED = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("fuzz", max_examples=100, derandomize=True, print_blob=True, **_SHARED)
settings.register_profile("long", max_examples=1000, derandomize=False, print_blob=True, **_SHARED)

# `--hypothesis-profile` is applied when pytest configures, before this file is imported in a full
# `make test` run and after it when pytest starts in tests/fuzz; only replace hypothesis's own default.
if settings.get_current_profile_name() == "default":
    settings.load_profile("fuzz")


def examples(fraction: float) -> int:
    """`fraction` of the profile's max_examples (at least 10): for the slower properties."""
    return max(10, int(settings.default.max_examples * fraction))
