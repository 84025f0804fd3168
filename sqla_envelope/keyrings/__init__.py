"""Keyrings: where master keys live. base defines the protocol, one module per service."""

from .base import DataKey as DataKey
from .base import Keyring as Keyring
from .kms import KmsKeyring as KmsKeyring
from .local import LocalKeyring as LocalKeyring

__all__ = ["DataKey", "Keyring", "KmsKeyring", "LocalKeyring"]
