"""Secret providers: where a grant's secret is read from and written to.

A :class:`~secretgrants.uri.SecretURI` names its provider (``vault``,
``openbao`` or ``yaml``); :func:`build_providers` makes one
:class:`~secretgrants.providers.base.Provider` for each provider the settings
configure, and :class:`ProviderRegistry` hands the right one to a URI, or
refuses with ``UnsupportedOperation`` when that provider is not configured.

* ``vault`` when ``VAULT_URL`` is set (auth per ``VAULT_AUTH_METHOD``);
* ``openbao`` when ``OPENBAO_URL`` is set (token auth);
* ``yaml`` when ``YAML_VAULT_PATH`` is set (writable in dev mode only).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from secretgrants.errors import UnsupportedOperation
from secretgrants.providers.base import (
    PURPOSE_OPERATIONS,
    Provider,
    SecretData,
    SecretMetadata,
    VersionInfo,
)
from secretgrants.providers.kv2 import (
    AppRoleAuth,
    AuthLease,
    KubernetesAuth,
    KV2Provider,
    TokenAuth,
    VaultAuth,
    build_kv2_provider,
)
from secretgrants.providers.yamlfile import YAMLFileProvider
from secretgrants.settings import Settings
from secretgrants.uri import SecretURI

__all__ = [
    "PURPOSE_OPERATIONS",
    "AppRoleAuth",
    "AuthLease",
    "KV2Provider",
    "KubernetesAuth",
    "Provider",
    "ProviderRegistry",
    "SecretData",
    "SecretMetadata",
    "TokenAuth",
    "VaultAuth",
    "VersionInfo",
    "YAMLFileProvider",
    "build_kv2_provider",
    "build_providers",
]


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per configured provider name (``vault``, ``openbao``, ``yaml``)."""
    providers: dict[str, Provider] = {}
    if settings.vault_url:
        providers["vault"] = build_kv2_provider(settings, "vault")
    if settings.openbao_url:
        providers["openbao"] = build_kv2_provider(settings, "openbao")
    if settings.yaml_vault_path is not None:
        providers["yaml"] = YAMLFileProvider(settings.yaml_vault_path, dev_mode=settings.dev_mode)
    return providers


class ProviderRegistry(Mapping[str, Provider]):
    """The configured providers by name, and the one for a URI."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        return cls(build_providers(settings))

    def __getitem__(self, name: str) -> Provider:
        return self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __repr__(self) -> str:
        return f"ProviderRegistry({sorted(self._providers)!r})"

    def provider_for(self, uri: SecretURI) -> Provider:
        """The provider serving ``uri``; ``UnsupportedOperation`` if it is not configured."""
        provider = self._providers.get(uri.provider)
        if provider is None:
            configured = ", ".join(sorted(self._providers)) or "none"
            raise UnsupportedOperation(
                f"provider {uri.provider!r} is not configured (configured: {configured})"
            )
        return provider

    async def close(self) -> None:
        """Close every provider."""
        for provider in self._providers.values():
            await provider.close()
