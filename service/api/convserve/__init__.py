"""Generated from protos/convserve/ by scripts/generate_protos.py; do not edit."""
