"""The identity provider's signing keys (its JWKS): fetched at startup through the shared HTTP
client, kept, refreshed every AUTH_KEYS_REFRESH_SECONDS, and at once for a token that names a
key id not among them, at most once per AUTH_KEYS_MIN_REFRESH_SECONDS; concurrent refreshes
share one fetch. A provider that is down costs nothing but the refresh: tokens signed with a
kept key still pass."""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from jwt import PyJWK

from {{ cookiecutter.package_name }}.metrics import AUTH_KEY_REFRESHES, AUTH_KEYS_FETCHED
from {{ cookiecutter.package_name }}.resources.lifecycle import describe, lifecycle
from {{ cookiecutter.package_name }}.settings import Settings, https_or_loopback
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)

# The signature algorithms each kind of key can verify: a token's `alg` must be one of its key's
# (and of AUTH_ALGORITHMS), so no token chooses how its key is used (an HMAC keyed with a
# public key, say). Symmetric (`oct`) keys are never taken from a JWKS.
ALGORITHMS_BY_KEY_TYPE: Mapping[tuple[object, object], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
DISCOVERY_PATH = "/.well-known/openid-configuration"
_UNCOMPRESSED_JSON = {"Accept": "application/json", "Accept-Encoding": "identity"}


class KeysUnavailableError(Exception):
    """The provider's keys could not be fetched, or what came was no usable JWKS."""


@dataclass(frozen=True)
class SigningKey:
    key: Any  # a public key of the cryptography package
    algorithms: frozenset[str]


class AuthKeys:
    """The keys by key id, as last fetched; routes verify tokens with `get`."""

    def __init__(self, settings: Settings, http_client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._client = http_client
        self._keys: dict[str, SigningKey] = {}
        self.jwks_url: str | None = settings.auth_jwks_url
        self._last_attempt = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self, key_id: str) -> SigningKey | None:
        """The key of that id; an id not among them refreshes the keys first, unless a refresh
        began less than AUTH_KEYS_MIN_REFRESH_SECONDS ago (a flood of made-up ids must not
        become a flood against the provider)."""
        if key_id not in self._keys:
            since = time.monotonic() - self._last_attempt
            if since >= self.settings.auth_keys_min_refresh_seconds or self._refreshing:
                with contextlib.suppress(KeysUnavailableError):
                    await self.refresh("unknown_key")
        return self._keys.get(key_id)

    async def refresh(self, reason: str) -> None:
        """Fetch the keys again; callers at the same time share one fetch. Raises
        KeysUnavailableError and keeps the keys it had when the fetch fails."""
        if self._refreshing is None:
            self._last_attempt = time.monotonic()
            self._refreshing = asyncio.create_task(self._fetch(reason))
            self._refreshing.add_done_callback(self._refreshed)
        # Shielded: a caller that gives up (its request cancelled) does not cancel the others'.
        await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiter got it already

    async def _fetch(self, reason: str) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.auth_keys_fetch_timeout):
                if self.jwks_url is None:
                    self.jwks_url = await self._discover_jwks_url()
                keys = parse_jwks(await self._get_json(self.jwks_url))
        except Exception as exc:
            AUTH_KEY_REFRESHES.labels("failed").inc()
            log.warning("auth.keys_refresh_failed", reason=reason, error=describe(exc))
            raise KeysUnavailableError(describe(exc)) from exc
        self._keys = keys
        AUTH_KEY_REFRESHES.labels("ok").inc()
        AUTH_KEYS_FETCHED.set(time.time())
        log.info(
            "auth.keys_refreshed", reason=reason, keys=len(keys), duration_ms=elapsed_ms(started)
        )

    async def _discover_jwks_url(self) -> str:
        issuer = self.settings.auth_issuer
        document = await self._get_json(issuer.rstrip("/") + DISCOVERY_PATH)
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the same issuer.
        if document.get("issuer") != issuer:
            raise KeysUnavailableError(
                f"the discovery document names issuer {document.get('issuer')!r}, not {issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeysUnavailableError("the discovery document has no jwks_uri")
        try:
            return https_or_loopback(jwks_uri)
        except ValueError as exc:
            raise KeysUnavailableError(f"the discovery document's jwks_uri: {exc}") from None

    async def _get_json(self, url: str) -> dict[str, Any]:
        where, limit = _without_query(url), self.settings.auth_keys_max_bytes
        try:
            async with self._client.stream("GET", url, headers=_UNCOMPRESSED_JSON) as response:
                response.raise_for_status()
                # A compressed body would be inflated in memory before it could be counted.
                if response.headers.get("Content-Encoding", "identity") != "identity":
                    raise KeysUnavailableError(f"{where}: a compressed answer")
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > limit:
                        raise KeysUnavailableError(f"{where}: more than {limit} bytes")
        except httpx.HTTPStatusError as exc:
            raise KeysUnavailableError(f"{where}: {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise KeysUnavailableError(f"{where}: {type(exc).__name__}") from None
        document = json.loads(body)
        if not isinstance(document, dict):
            raise KeysUnavailableError(f"{where}: not a JSON object")
        return document

    async def keep_fresh(self) -> None:
        """Refresh every AUTH_KEYS_REFRESH_SECONDS, for the life of the service."""
        while True:
            await asyncio.sleep(self.settings.auth_keys_refresh_seconds)
            with contextlib.suppress(KeysUnavailableError):
                await self.refresh("schedule")

    def __len__(self) -> int:
        return len(self._keys)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, SigningKey]:
    """The signature keys of a JWKS by key id; keys without an id, for encryption, symmetric,
    or of a kind or algorithm not allowed are left out. None left is an error."""
    keys: dict[str, SigningKey] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeysUnavailableError("the JWKS has no keys")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        key_id, kind = entry.get("kid"), entry.get("kty")
        curve = entry.get("crv") if kind != "RSA" else None
        if not isinstance(kind, str) or not isinstance(curve, str | None):
            continue
        algorithms = ALGORITHMS_BY_KEY_TYPE.get((kind, curve), frozenset())
        if isinstance(entry.get("alg"), str):
            # A key that names its algorithm is used with that one only.
            algorithms &= {entry["alg"]}
        if isinstance(key_id, str) and algorithms and (key := _public_key(entry, algorithms)):
            keys[key_id] = SigningKey(key, algorithms)
    if not keys:
        raise KeysUnavailableError("the JWKS has no usable signature key")
    return keys


def _without_query(url: str) -> str:
    """The URL as logged: a query string may hold a key of the provider's."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _public_key(entry: dict[str, Any], algorithms: frozenset[str]) -> Any:
    """The entry's key as PyJWT loads it, or None (logged) when it cannot."""
    try:
        return PyJWK(entry, algorithm=min(algorithms)).key
    except Exception as exc:
        log.warning("auth.key_skipped", key_id=str(entry.get("kid"))[:100], error=describe(exc))
        return None


@asynccontextmanager
async def open_auth_keys(
    settings: Settings, http_client: httpx.AsyncClient, deadline: float
) -> AsyncIterator[AuthKeys]:
    keys = AuthKeys(settings, http_client)
    refreshing: asyncio.Task[None] | None = None

    async def stop_refreshing() -> None:
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing

    # Logged with resource.opened: completed by the first fetch.
    target: dict[str, object] = {"issuer": settings.auth_issuer}

    async def fetch_first() -> None:
        await keys.refresh("startup")
        target.update(jwks_url=_without_query(keys.jwks_url or ""), keys=len(keys))

    async with lifecycle(
        "auth_keys",
        verify=fetch_first,
        close=stop_refreshing,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target=target,
    ):
        refreshing = asyncio.create_task(keys.keep_fresh(), name="auth-keys-refresh")
        yield keys
