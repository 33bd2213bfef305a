"""scripts/soak: the example app under load and chaos, every response checked (run.py)."""
