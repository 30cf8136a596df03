"""Diagnostics quoted in docs/: each alternates what it compares in one run (ABBA order) on a shared machine."""
