"""The client the commands talk to the API with, built from the environment, with the
command line's words for what is missing."""

from __future__ import annotations

import os

from .._client import Client
from .._config import ENV_API_KEY
from .._coordination import Coordinator
from ..testing._arguments import UsageError


def api_client(*, rate_limit: float | None = None, fleet: Coordinator | None = None) -> Client:
    """A :class:`Client` from ``AIO88_API_KEY`` and ``AIO88_BASE_URL`` (sharing ``fleet``'s
    rate budget and task leases, when given).

    Raises:
        UsageError: No key is set (before anything is sent).
    """
    if not os.environ.get(ENV_API_KEY, "").strip():
        raise UsageError(
            f"no API key: set {ENV_API_KEY} (and AIO88_BASE_URL for another server than "
            "https://88api.ai)"
        )
    return Client(rate_limit=rate_limit, fleet=fleet)
