"""Settings for running the example: ``DJANGO_SETTINGS_MODULE=examples.django_app.settings``."""

import os

SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
SILO_ADDRESS = os.environ.get("SILO_ADDRESS", "127.0.0.1:7450")
