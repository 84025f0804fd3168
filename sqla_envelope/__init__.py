"""Row-level envelope encryption for SQLAlchemy: a data key per value, master keys in a keyring."""

from ._version import __version__ as __version__
from .batching import PREFETCH_OPTION as PREFETCH_OPTION
from .batching import install as _install_engine_events
from .context import EncryptionContext as EncryptionContext
from .encryptor import Encryptor as Encryptor
from .encryptor import configure as configure
from .encryptor import get_default_encryptor as get_default_encryptor
from .envelope import Envelope as Envelope
from .envelope import WrappedKey as WrappedKey
from .envelope import unpack as unpack_envelope
from .errors import ConfigurationError as ConfigurationError
from .errors import DecryptionError as DecryptionError
from .errors import EnvelopeError as EnvelopeError
from .errors import InvalidValueError as InvalidValueError
from .errors import KeyringError as KeyringError
from .errors import MalformedEnvelopeError as MalformedEnvelopeError
from .errors import SecretExists as SecretExists
from .errors import SecretNotFound as SecretNotFound
from .errors import TenantShreddedError as TenantShreddedError
from .errors import UnsupportedComparisonError as UnsupportedComparisonError
from .keyrings import DataKey as DataKey
from .keyrings import Keyring as Keyring
from .keyrings import KmsKeyring as KmsKeyring
from .keyrings import LocalKeyring as LocalKeyring
from .maintenance.rotation import rewrap as rewrap
from .rows import SealedValue as SealedValue
from .search import BlindIndex as BlindIndex
from .search import plan_bits as plan_bits
from .search import reindex as reindex
from .secrets import SecretStore as SecretStore
from .sql_guard import install as _install_sql_guard
from .tenants import TenantKeyring as TenantKeyring
from .types import EncryptedType as EncryptedType

_install_engine_events()
_install_sql_guard()


__all__ = [
    "PREFETCH_OPTION",
    "BlindIndex",
    "ConfigurationError",
    "DataKey",
    "DecryptionError",
    "EncryptedType",
    "EncryptionContext",
    "Encryptor",
    "Envelope",
    "EnvelopeError",
    "InvalidValueError",
    "Keyring",
    "KeyringError",
    "KmsKeyring",
    "LocalKeyring",
    "MalformedEnvelopeError",
    "SealedValue",
    "SecretExists",
    "SecretNotFound",
    "SecretStore",
    "TenantKeyring",
    "TenantShreddedError",
    "UnsupportedComparisonError",
    "WrappedKey",
    "configure",
    "get_default_encryptor",
    "plan_bits",
    "reindex",
    "rewrap",
    "unpack_envelope",
]
