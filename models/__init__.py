"""The model zoo (installed as mpinet.models)."""
