"""Tests of the HTTP side of a node (health, metrics)."""
