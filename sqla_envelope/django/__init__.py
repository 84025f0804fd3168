"""Django integration: settings.SQLA_ENVELOPE configures the encryptor, engines come from DATABASES.

Add ``"sqla_envelope.django"`` to ``INSTALLED_APPS``. Models stay SQLAlchemy models
(EncryptedType is a SQLAlchemy type, not a Django field): ``engine.get_engine()``
and ``engine.session()`` give views an Engine and Sessions on a database of
``DATABASES``, and ``manage.py envelope_rewrap``, ``envelope_verify`` and
``envelope_encrypt_column`` run the column operations. ``conf.py`` documents the
settings. Importing this package imports nothing from Django.
"""
