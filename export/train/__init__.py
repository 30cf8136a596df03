"""Training scripts: each trains a bundled model and ends in the common writer (export/writer.py)."""
