"""Generated from protos/convserve/v1/ by scripts/generate_protos.py; do not edit."""
