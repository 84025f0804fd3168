"""Settings of the clinic example: SQLite and a local key file by default, made on first run.

Environment: DATABASE_URL (e.g. postgresql://app:secret@localhost/clinic) for
another database, SQLA_ENVELOPE_KEY_FILE for the key file's path, KMS_KEY_ID
(with AWS_REGION) to keep master keys in AWS KMS instead, DJANGO_SECRET_KEY and
DJANGO_DEBUG=0 outside a laptop.
"""

import os
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from sqla_envelope import LocalKeyring

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = ["sqla_envelope.django", "clinic"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "project.urls"
USE_TZ = True

_BACKENDS = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}


def _database(url: str) -> dict[str, Any]:
    """A DATABASES entry from a URL such as postgresql://app:secret@localhost:5432/clinic."""
    parsed = make_url(url)
    return {
        "ENGINE": _BACKENDS[parsed.get_backend_name()],
        "NAME": parsed.database or "",
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL", "sqlite:///clinic.sqlite3"))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["NAME"] = BASE_DIR / DATABASES["default"]["NAME"]

# The master key: in AWS KMS when KMS_KEY_ID is set, else in a local key file,
# written on the first run, readable by its owner only. Keep it out of git.
SQLA_ENVELOPE: dict[str, Any]
if os.environ.get("KMS_KEY_ID"):
    SQLA_ENVELOPE = {
        "KMS_KEY_ID": os.environ["KMS_KEY_ID"],
        "KMS_REGION": os.environ.get("AWS_REGION"),
        "MODE": "bounded_reuse",  # one KMS call per 1,000 rows written, docs/kms.md
        "MAX_ROWS": 1000,
        "AUDIT_LOG": True,
    }
else:
    KEY_FILE = Path(os.environ.get("SQLA_ENVELOPE_KEY_FILE", BASE_DIR / "clinic.keys.json"))
    if not KEY_FILE.exists():
        LocalKeyring.generate().to_file(KEY_FILE)
    SQLA_ENVELOPE = {"KEY_FILE": KEY_FILE, "AUDIT_LOG": True}

# Audit lines (one per data key wrapped or unwrapped, never a value) on the console.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sqla_envelope.audit": {"handlers": ["console"], "level": "INFO"}},
}
