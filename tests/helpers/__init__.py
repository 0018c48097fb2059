"""Shared test code, imported as ``tests.helpers.<module>`` (see tests/README.md)."""
