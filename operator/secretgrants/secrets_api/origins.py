"""Where the Secrets API is reached: the URLs a DPoP proof's ``htu`` may name.

RFC 9449 binds a proof to the method and URL of its request. The URL a server
builds for a request comes from the ``Host`` header, which the client chooses:
compared with it, a proof minted for another server with the same path would
be accepted here by sending that server's name as ``Host``. So ``htu`` is
compared with the API's own public URLs instead:

- SECRETGRANTS_API_PUBLIC_URLS when set: each a base URL (scheme, host, the
  port when it names one, and a path prefix when a proxy adds one);
- else ``https`` with any name the serving certificate is valid for (its DNS
  and IP subject alternative names, read each time a certificate is loaded),
  any port (a Service or a port-forward may map it). A client that verifies
  TLS reaches the API under one of those names anyway.

Knowing neither (an application served without a certificate and without
public URLs), no ``htu`` is accepted: every DPoP proof is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509

__all__ = ["PublicOrigins", "certificate_names"]

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class _Base:
    scheme: str
    host: str
    port: int | None  # None: any port
    prefix: str  # a path prefix without the trailing slash


def _host(name: str) -> str:
    """A host name lower-case, an IP address in its compressed form."""
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name.lower().rstrip(".")


def _parse_base(url: str) -> _Base:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not a base URL (https://host[:port][/prefix]): {url!r}")
    return _Base(parts.scheme.lower(), _host(parts.hostname), parts.port, parts.path.rstrip("/"))


def certificate_names(pem: bytes) -> frozenset[str]:
    """The DNS names (wildcards as written) and IP addresses a PEM certificate is valid for.

    The first certificate of the chain is the server's; without a SAN extension, none.
    """
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = (_host(name) for name in san.get_values_for_type(x509.DNSName))
    ips = (address.compressed for address in san.get_values_for_type(x509.IPAddress))
    return frozenset([*dns, *ips])


def _name_matches(pattern: str, host: str) -> bool:
    """RFC 6125: a leftmost ``*`` label stands for exactly one label."""
    if pattern == host:
        return True
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return False


class PublicOrigins:
    """Tells whether a proof's ``htu`` names this API and a request's path."""

    def __init__(self, public_urls: Iterable[str] = ()) -> None:
        self.bases = tuple(_parse_base(url) for url in public_urls)
        self.certificate_names: frozenset[str] = frozenset()

    def load_certificate(self, pem: bytes) -> None:
        """Take the names of the certificate now served (at start and on each renewal)."""
        self.certificate_names = certificate_names(pem)

    def accepts(self, htu: str, path: str) -> bool:
        """True when ``htu`` (query and fragment aside) is one of this API's URLs for ``path``."""
        try:
            parts = urlsplit(htu)
            port = parts.port
        except ValueError:
            return False
        if not parts.hostname:
            return False
        host, scheme = _host(parts.hostname), parts.scheme.lower()
        if self.bases:
            return any(
                (scheme, host) == (base.scheme, base.host)
                and (base.port is None or (port or _DEFAULT_PORTS[scheme]) == base.port)
                and parts.path == base.prefix + path
                for base in self.bases
            )
        return (
            scheme == "https"
            and parts.path == path
            and any(_name_matches(name, host) for name in self.certificate_names)
        )

    def for_path(self, path: str) -> Callable[[str], bool]:
        """The ``htu`` check of one request."""
        return lambda htu: self.accepts(htu, path)
