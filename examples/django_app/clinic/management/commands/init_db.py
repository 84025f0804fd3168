"""``manage.py init_db``: create the clinic's tables; existing tables are left as they are."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from sqla_envelope.django.engine import get_engine

from ...models import Base


class Command(BaseCommand):
    help = "Create the clinic's tables (SQLAlchemy metadata); existing tables are kept."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database", metavar="ALIAS", help="the alias in DATABASES")

    def handle(self, *args: Any, **options: Any) -> None:
        engine = get_engine(options["database"])
        Base.metadata.create_all(engine)
        names = ", ".join(sorted(Base.metadata.tables))
        self.stdout.write(f"{names} ready in {engine.url.render_as_string(hide_password=True)}")
