"""Serving state shared by the health service, the servicers and the shutdown sequence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lifecycle:
    """serving: models loaded and not shutting down. accepting: new calls are still admitted."""

    serving: bool = False
    accepting: bool = True
