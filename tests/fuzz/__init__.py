"""Property-based fuzz tests (a package, so its conftest.py never shadows tests/conftest.py)."""
