"""Minimal settings for the postern Django example (no database)."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-postern-example-change-me"
)
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "hello",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
ASGI_APPLICATION = "mysite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
            ],
        },
    },
]

# No database: the example uses no models, sessions or auth.
DATABASES = {}

USE_TZ = True

# Static files are nginx's job, not Django's (DEBUG is off, so Django serves none):
#     python manage.py collectstatic --noinput        # copies them into STATIC_ROOT
# and in nginx's server block:
#     location /static/ { alias /srv/mysite/staticfiles/; }   # STATIC_ROOT, with the /
# STATIC_ROOT comes from DJANGO_STATIC_ROOT when set (the test suite collects into a
# temporary directory), else staticfiles/ next to manage.py.
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles"

# Send errors to stderr, which postern logs.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
