"""A stand-in for vLLM (tests/standin/README.md): not vLLM."""

__version__ = "0.32.0+standin"
