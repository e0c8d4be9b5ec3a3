"""Example handlers for ``silo worker`` (see the README quickstart)."""
