"""Helpers shared by the test packages (never a conftest, never another test package)."""
