"""Draw lottery tickets once, spend them many ways: the pure-PyTorch core (no Ray, no MLflow)."""

__version__ = "0.1.0"
