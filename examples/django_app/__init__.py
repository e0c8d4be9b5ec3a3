"""A minimal Django app enqueuing silo jobs with the blocking client (see views.py)."""
