"""Generated from protos/inference/ by scripts/generate_protos.py; do not edit."""
