"""boto3 KMS clients for a KmsKeyring: one per region, built on first use.

With kms.py, the only modules that touch boto3 and botocore; both import them
lazily, so ``import sqla_envelope`` works without the ``kms`` extra.
"""

from __future__ import annotations

import functools
import platform
import threading
from typing import TYPE_CHECKING, Literal, get_args

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from boto3.session import Session
    from botocore.config import Config
    from mypy_boto3_kms.client import KMSClient

__all__ = ["KmsClients", "RetryMode", "arn_parts", "is_key_arn"]

RetryMode = Literal["standard", "adaptive", "legacy"]
_INSTALL_HINT = "KmsKeyring needs boto3: pip install 'sqla-envelope[kms]'"


def arn_parts(key_id: str) -> tuple[str, str] | None:
    """(region, resource) of a KMS ARN such as ``arn:aws:kms:eu-west-1:111:key/abc``."""
    parts = key_id.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "kms":
        return None
    return parts[3], parts[5]


def is_key_arn(key_id: str) -> bool:
    parts = arn_parts(key_id)
    return parts is not None and parts[1].startswith("key/")


class KmsClients:
    """A KMS client per region: the region of a key ARN, else ``region_name``.

    ``client`` (the user's own) serves its region and is kept across a fork; the
    others are built with ``session`` (a private one by default: boto3's default
    session is not safe to share across threads), ``endpoint_url`` and a botocore
    Config of retries and timeouts.
    """

    def __init__(
        self,
        *,
        client: KMSClient | None,
        region_name: str | None,
        endpoint_url: str | None,
        session: Session | None,
        max_attempts: int,
        retry_mode: RetryMode,
        connect_timeout: float,
        read_timeout: float,
        max_pool_connections: int,
    ) -> None:
        if retry_mode not in get_args(RetryMode):
            raise ConfigurationError(f"retry_mode must be one of {get_args(RetryMode)}")
        if max_attempts < 1 or connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("max_attempts must be >= 1 and the timeouts positive")
        if max_pool_connections < 1:
            raise ConfigurationError("max_pool_connections must be >= 1")
        client_region = client.meta.region_name if client is not None else None
        if client_region and region_name and client_region != region_name:
            raise ConfigurationError(
                f"client is for region {client_region!r} but region_name is {region_name!r}"
            )
        self.region_name = region_name or client_region
        self._own = client
        self._endpoint_url = endpoint_url
        self._session = session
        self._options = (
            max_attempts,
            retry_mode,
            connect_timeout,
            read_timeout,
            max_pool_connections,
        )
        self._lock = threading.Lock()
        self._clients: dict[str | None, KMSClient] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the clients built here (after os.fork(): connection pools must not cross)."""
        self._lock = threading.Lock()
        own = self._own
        self._clients = {own.meta.region_name: own} if own is not None else {}

    def built(self) -> int:
        """How many clients exist now (building a keyring must build none)."""
        return len(self._clients)

    def for_key(self, key_id: str) -> KMSClient:
        """The client for ``key_id``'s region, created on first use (thread-safe)."""
        parts = arn_parts(key_id)
        region = parts[0] if parts is not None else self.region_name
        kms = self._clients.get(region)
        if kms is not None:
            return kms
        with self._lock:
            kms = self._clients.get(region)
            if kms is None:
                kms = self._new(region, key_id)
                self._clients[region] = kms
        return kms

    def _new(self, region: str | None, key_id: str) -> KMSClient:
        try:
            import boto3
            from botocore.exceptions import NoRegionError
        except ImportError:
            raise ConfigurationError(_INSTALL_HINT) from None
        if self._session is None:
            self._session = boto3.session.Session()
        try:
            return self._session.client(
                "kms", region_name=region, endpoint_url=self._endpoint_url, config=self._config()
            )
        except NoRegionError:
            raise ConfigurationError(
                f"no AWS region for KMS key {key_id!r}: pass region_name= or a key ARN"
            ) from None

    def _config(self) -> Config:
        from botocore.config import Config

        attempts, mode, connect, read, pool = self._options
        return Config(
            retries={"mode": mode, "total_max_attempts": attempts},
            connect_timeout=connect,
            read_timeout=read,
            max_pool_connections=pool,
            # The keyring builds every request itself; validating it again costs
            # about 4% of a KMS call's CPU, which bounds how many calls overlap.
            parameter_validation=False,
            user_agent=user_agent(),
        )


@functools.cache
def user_agent() -> str:
    """The User-Agent of every KMS request from clients the keyring builds.

    Names the library first, so CloudTrail's ``userAgent`` tells its calls apart
    from the application's other AWS traffic. A fixed string (botocore's
    documented ``Config(user_agent=...)``) also spares botocore rebuilding its
    default one twice per request, a fifth of a KMS call's client CPU, which
    bounds how many calls one process can overlap. botocore still appends the
    session's ``user_agent_extra`` (boto3 puts its botocore version there).
    """
    import boto3

    from .._version import __version__

    # boto3's session appends "Botocore/<version>" as its user_agent_extra.
    return (
        f"sqla-envelope/{__version__} Boto3/{boto3.__version__} "
        f"Python/{platform.python_version()} {platform.system()}/{platform.release()}"
    )
