"""The clinic app: SQLAlchemy models with encrypted columns, served as JSON by Django views."""
