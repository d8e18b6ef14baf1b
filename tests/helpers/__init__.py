"""Helpers the test suites share (on the path through pyproject's pytest pythonpath)."""
