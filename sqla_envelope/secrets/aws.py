"""AWS sessions and regions as credstash chooses them: a profile or an assumed role.

credstash's ``-p PROFILE`` takes credentials from an AWS profile, ``-n ARN``
from a role assumed with STS (never both). Its region is ``-r``, else boto3's
(``AWS_DEFAULT_REGION``, then the profile's), else ``us-east-1``; its KMS region
is ``--kms-region``, else the ``kms-region`` saved in ``~/.credstash`` by
``setup --save-kms-region``, else the region. boto3 is imported only here (and
in the keyrings), when asked; nothing knows SQLAlchemy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, KeyringError

__all__ = [
    "DEFAULT_REGION",
    "ROLE_SESSION_NAME",
    "aws_session",
    "config_path",
    "error_code",
    "kms_region_of",
    "region_of",
    "save_kms_region",
]

DEFAULT_REGION = "us-east-1"  # credstash's fallback when boto3 finds none
# CloudTrail shows it for every call made with the assumed role.
ROLE_SESSION_NAME = "sqla-envelope-secrets"


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigurationError("AWS needs boto3: pip install 'sqla-envelope[kms]'") from None
    return boto3


def aws_session(
    *, profile: str | None = None, role_arn: str | None = None, region: str | None = None
) -> Any:
    """A boto3 Session with the credentials of ``profile``, of the role ``role_arn``, or boto3's.

    ConfigurationError for both at once or a profile the AWS config files lack;
    KeyringError when STS refuses or cannot be reached (its error code only).
    """
    if profile and role_arn:
        raise ConfigurationError("give an AWS profile (-p) or a role to assume (-n), not both")
    boto3 = _boto3()
    if profile:
        try:
            return boto3.session.Session(profile_name=profile)
        except Exception as exc:  # botocore's ProfileNotFound
            raise ConfigurationError(
                f"AWS profile {profile!r} is not in the AWS config files ({type(exc).__name__})"
            ) from None
    base = boto3.session.Session()
    if not role_arn:
        return base
    sts = base.client("sts", region_name=region_of(base, region))
    try:
        answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=ROLE_SESSION_NAME)
    except Exception as exc:
        message = f"STS AssumeRole of {role_arn!r} failed: {error_code(exc)}"
        raise KeyringError(message).chain(exc) from exc
    credentials = answer["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=base.region_name,
    )


def error_code(exc: Exception) -> str:
    """AWS's error code of a failed call (or the exception's type), to name in our errors.

    The code only: AWS's messages may quote the request, which holds ciphertext
    at best.
    """
    response = getattr(exc, "response", None)
    details = response.get("Error") if isinstance(response, dict) else None
    code = details.get("Code") if isinstance(details, dict) else None
    return str(code or type(exc).__name__)


def region_of(session: Any, region: str | None) -> str:
    """``region``, else the session's (AWS_DEFAULT_REGION, then the profile's), else us-east-1."""
    return region or session.region_name or DEFAULT_REGION


def config_path() -> Path:
    """credstash's configuration file, ``~/.credstash`` (JSON)."""
    return Path(os.path.expanduser("~")) / ".credstash"


def _saved(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{str(path)!r} is not a readable JSON file: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{str(path)!r} does not hold a JSON object")
    return config


def kms_region_of(kms_region: str | None, region: str, path: Path | None = None) -> str:
    """``kms_region``, else ``kms-region`` in ~/.credstash, else ``region``."""
    saved = _saved(path or config_path()).get("kms-region")
    return kms_region or (saved if isinstance(saved, str) and saved else None) or region


def save_kms_region(region: str, path: Path | None = None) -> Path:
    """Save ``region`` as ``kms-region`` in ~/.credstash, keeping its other settings."""
    target = path or config_path()
    config = _saved(target)
    config["kms-region"] = region
    target.write_text(json.dumps(config, indent=4) + "\n")
    return target
