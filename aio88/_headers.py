"""Request headers that are safe to send: nothing a header could smuggle in.

This module is a leaf: it imports nothing from aio88.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

__all__ = ["build_headers", "check_headers"]

#: Characters that would end a header line early (and so smuggle in another header, or a
#: whole request), or that no HTTP server accepts.
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
_FORBIDDEN_IN_NAMES = (*_FORBIDDEN_IN_HEADERS, ":", " ", "\t")


def check_headers(headers: Mapping[str, str], api_key: str) -> None:
    """Refuse header names or values (and an API key) that could not be sent safely.

    Raises:
        ValueError: Naming the header and what is wrong with it.
    """
    for char in _FORBIDDEN_IN_HEADERS:
        if char in api_key:
            raise ValueError(
                f"the API key contains {char!r}; copy the key again without line breaks"
            )
    for name, value in headers.items():
        if not all(isinstance(part, str) for part in (name, value)):
            raise TypeError(f"header {name!r}: names and values must be strings")
        if not name or any(char in name for char in _FORBIDDEN_IN_NAMES):
            raise ValueError(f"header name {name!r} is not valid in HTTP")
        for char in _FORBIDDEN_IN_HEADERS:
            if char in value:
                raise ValueError(
                    f"header {name!r} has {char!r} in its value, which would end the header "
                    "line early; remove it"
                )


def build_headers(
    headers: Mapping[str, str], api_key: str, user_agent: str
) -> tuple[CIMultiDict[str], CIMultiDict[str], CIMultiDict[str]]:
    """(API calls' headers, with a JSON body, other origins'), built once per client.

    A user's header replaces the default of the same name, whatever its case. Other
    origins (a CDN, a redirect's target) get none of the user's headers but the
    User-Agent, and never the credentials.
    """
    own_agent = next((v for k, v in headers.items() if k.lower() == "user-agent"), user_agent)
    plain: CIMultiDict[str] = CIMultiDict({"User-Agent": own_agent, "Accept": "*/*"})
    api: CIMultiDict[str] = CIMultiDict({"User-Agent": user_agent, "Accept": "application/json"})
    for name, value in headers.items():
        api[name] = value
    api["Authorization"] = f"Bearer {api_key}"
    with_json = CIMultiDict(api)
    with_json["Content-Type"] = "application/json"
    return api, with_json, plain
