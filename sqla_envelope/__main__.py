"""``python -m sqla_envelope``: the same command as ``sqla-envelope``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
