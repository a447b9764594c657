"""Helpers shared by the tests (never import one test module from another)."""
