"""Which proxy a request goes through: ``proxy=`` or the environment, once per origin.

aiohttp can read ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` itself (``trust_env=True``),
but it does so for every request, in a worker thread, together with ``~/.netrc``: about
four times a poll's CPU. The environment does not change under a running client, so it
is read once, when the client opens, and the answer for each origin is kept.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import urllib.request
from collections.abc import Mapping

from yarl import URL

__all__ = ["DIRECT", "ProxyChoice", "Proxies", "ProxySetting"]

log = logging.getLogger("aio88")

#: What ``Client(proxy=...)`` takes: a URL, ``False`` for no proxy at all, or ``None`` to
#: follow the environment.
ProxySetting = str | URL | bool | None

#: The proxy a request goes through (None: directly) and the headers it needs.
ProxyChoice = tuple[URL | None, Mapping[str, str] | None]

#: No proxy: the request goes directly.
DIRECT: ProxyChoice = (None, None)


def _parse_proxy(raw: str | URL, source: str) -> ProxyChoice:
    """A proxy URL as aiohttp wants it: credentials moved to ``Proxy-Authorization``."""
    url = URL(raw) if isinstance(raw, str) else raw
    if "://" not in str(raw):  # "proxy:3128", as curl allows
        url = URL(f"http://{raw}")
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"{source} must be an http:// proxy URL such as 'http://proxy.example:3128', "
            f"got {url.with_password(None)!s}"
        )
    if url.user is None:
        return url, None
    token = f"{url.user}:{url.password or ''}".encode()
    headers = {"Proxy-Authorization": "Basic " + base64.b64encode(token).decode()}
    return url.with_user(None), headers


def _from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``{"https": url, "no": "a,b", ...}`` from ``*_proxy`` variables, as the standard
    library's ``getproxies_environment`` reads them: lower case wins over upper case, and
    under CGI (``REQUEST_METHOD`` set) ``HTTP_PROXY`` is ignored, since a client can set it."""
    found: dict[str, str] = {}
    for lower_case_only in (False, True):
        for name, value in environ.items():
            if name[-6:].lower() != "_proxy" or (lower_case_only and name != name.lower()):
                continue
            if value:
                found[name[:-6].lower()] = value
            else:
                found.pop(name[:-6].lower(), None)
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)
    return found


def _in_networks(host: str, no_proxy: str) -> bool:
    """Whether ``host`` is an IP address inside a CIDR entry of ``NO_PROXY``
    (``10.0.0.0/8``, as Kubernetes deployments write it; the stdlib matches names only)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        if "/" not in entry:
            continue
        try:
            if address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


class Proxies:
    """Answers "which proxy for this URL?", from ``proxy=`` or from the environment.

    Args:
        setting: A proxy URL (every request goes through it), ``False`` (never a proxy,
            whatever the environment says), or ``None`` / ``True`` (the environment's
            ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``, read once now).
        environ: The variables to read instead of ``os.environ`` (for tests).
    """

    def __init__(self, setting: ProxySetting, environ: Mapping[str, str] | None = None) -> None:
        self._fixed: ProxyChoice | None = None
        self._env: dict[str, str] = {}
        self._by_origin: dict[tuple[str, str | None, int | None], ProxyChoice] = {}
        if setting is False:
            self._fixed = DIRECT
        elif isinstance(setting, str | URL):
            self._fixed = _parse_proxy(setting, "proxy")
        else:
            self._env = _from_environment(os.environ if environ is None else environ)

    def for_url(self, url: URL) -> ProxyChoice:
        """The proxy for a request to ``url`` (computed once per scheme, host and port)."""
        if self._fixed is not None:
            return self._fixed
        key = (url.scheme, url.host, url.port)
        choice = self._by_origin.get(key)
        if choice is None:
            choice = self._by_origin[key] = self._resolve(url)
        return choice

    def _resolve(self, url: URL) -> ProxyChoice:
        env = self._env
        raw = env.get(url.scheme) or env.get("all")
        if not raw:
            return DIRECT
        host = url.raw_host or ""  # punycode, as NO_PROXY entries are written
        # typeshed omits proxy_bypass_environment; it is the stdlib's NO_PROXY matcher.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if bypass(f"{host}:{url.port}", env) or _in_networks(host, env.get("no", "")):
            return DIRECT
        try:
            return _parse_proxy(raw, f"the {url.scheme.upper()}_PROXY environment variable")
        except ValueError as exc:
            # A proxy we cannot use (socks5://...): say so once, and go direct.
            log.warning("%s; requests to %s go directly", exc, url.host)
            return DIRECT
