"""Training of the bundled models (each script ends in the common writer, export/writer.py), their
figures (plots.py) and the rebuild plan of `convserve models` (bundled.py)."""
