"""The credential store: named, versioned secrets on any SQL database (credstash's job).

``SecretStore`` keeps each secret under its own data key, bound to the store,
its name and its version; the ``sqla-envelope secrets`` commands (cli/secrets.py)
give it credstash's command line. Items imported from credstash are kept as
credstash wrote them until ``SecretStore.reencrypt`` converts them.
"""

from __future__ import annotations

from .store import Conversion as Conversion
from .store import SecretInfo as SecretInfo
from .store import SecretMap as SecretMap
from .store import SecretStore as SecretStore

__all__ = ["Conversion", "SecretInfo", "SecretMap", "SecretStore"]
