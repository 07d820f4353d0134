"""The shared HTTP client takes proxies from the environment as any httpx client does
(HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY; not with HTTP_CLIENT_TRUST_ENV=false), and
verifies TLS against the authorities it is told to trust: through a real local forward proxy
and a real local TLS upstream with a certificate authority of the test's own."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.resources.http_client import open_http_client
from {{ cookiecutter.package_name }}.settings import Settings
from tests.servers import (
    Certificates,
    ForwardProxy,
    forward_proxy,
    https_upstream,
    make_certificates,
)

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# A name that IDNA 2008 and IDNA 2003 spell differently (xn--fa-hia.de against fass.de).
INTERNATIONAL_NAME, INTERNATIONAL_ASCII = "faß.de", "xn--fa-hia.de"


@pytest.fixture(autouse=True)
def no_proxies_but_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"), names=(INTERNATIONAL_ASCII,))


@pytest.fixture
def server_names() -> list[str | None]:
    """The server name (SNI) of each TLS handshake the upstream of `https_url` answers."""
    return []


@pytest.fixture
def https_url(certificates: Certificates, server_names: list[str | None]) -> Iterator[str]:
    with https_upstream(certificates, server_names) as url:
        yield url


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with forward_proxy(hosts={INTERNATIONAL_ASCII: "127.0.0.1"}) as proxy:
        yield proxy


@pytest.fixture
def open_client(
    make_settings: Callable[..., Settings],
) -> Callable[..., Any]:
    @asynccontextmanager
    async def open_(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(**overrides)
        async with open_http_client(settings, asyncio.get_running_loop().time() + 5) as client:
            yield client

    return open_


def echoed(response: httpx.Response) -> dict[str, Any]:
    """What the echoing upstream received: its path and headers (names lowercased)."""
    received: dict[str, Any] = response.json()
    received["headers"] = {name.lower(): value for name, value in received["headers"].items()}
    return received


async def test_http_proxy_carries_plain_http_calls(
    open_client: Callable[..., Any],
    proxy: ForwardProxy,
    upstream_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with open_client(http_client_base_url=upstream_url) as client:
        response = await client.get("/via/proxy?q=1")

    assert echoed(response)["path"] == "/via/proxy?q=1"
    assert proxy.seen == [(f"GET {upstream_url}/via/proxy?q=1", None)]


async def test_https_proxy_tunnels_https_calls(
    open_client: Callable[..., Any],
    proxy: ForwardProxy,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    https_url: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with open_client(
        http_client_base_url=https_url, http_client_ca_bundle=certificates.authority
    ) as client:
        response = await client.get("/through/tunnel")

    assert echoed(response)["path"] == "/through/tunnel"
    assert proxy.seen == [(f"CONNECT {https_url.removeprefix('https://')}", None)]


async def test_all_proxy_with_credentials_and_no_proxy(
    open_client: Callable[..., Any],
    proxy: ForwardProxy,
    upstream_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = upstream_url.rpartition(":")[2]
    monkeypatch.setenv("ALL_PROXY", proxy.url.replace("//", "//user:s3cret@"))
    monkeypatch.setenv("NO_PROXY", "localhost")
    async with open_client(http_client_base_url=upstream_url) as client:
        proxied = await client.get("/proxied")
        direct = await client.get(f"http://localhost:{port}/direct")

    # Basic credentials for the proxy alone, never for the upstream.
    assert proxy.seen == [(f"GET {upstream_url}/proxied", "Basic dXNlcjpzM2NyZXQ=")]
    assert "proxy-authorization" not in echoed(proxied)["headers"]
    assert echoed(direct)["path"] == "/direct"


async def test_the_environment_is_ignored_when_told(
    open_client: Callable[..., Any],
    proxy: ForwardProxy,
    upstream_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with open_client(
        http_client_base_url=upstream_url, http_client_trust_env=False
    ) as client:
        response = await client.get("/direct")

    assert echoed(response)["path"] == "/direct"
    assert proxy.seen == []


async def test_a_private_authority_is_trusted_when_named(
    open_client: Callable[..., Any],
    certificates: Certificates,
    https_url: str,
) -> None:
    async with open_client(
        http_client_base_url=https_url, http_client_ca_bundle=certificates.authority
    ) as trusting:
        response = await trusting.get("/trusted")
    async with open_client(http_client_base_url=https_url) as not_trusting:
        with pytest.raises(httpx.ConnectError):
            await not_trusting.get("/untrusted")

    assert echoed(response)["path"] == "/trusted"


async def test_a_certificate_for_another_name_is_a_connect_error(
    open_client: Callable[..., Any],
    certificates: Certificates,
    https_url: str,
) -> None:
    # The certificate names 127.0.0.1 and xn--fa-hia.de; localhost is the same server.
    other_name = https_url.replace("127.0.0.1", "localhost")
    async with open_client(
        http_client_base_url=other_name, http_client_ca_bundle=certificates.authority
    ) as client:
        with pytest.raises(httpx.ConnectError, match=r"(?i)hostname|certificate"):
            await client.get("/")


async def test_an_international_name_is_one_name_from_lookup_to_host_header(
    open_client: Callable[..., Any],
    proxy: ForwardProxy,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    https_url: str,
    server_names: list[str | None],
) -> None:
    # The proxy looks the name up (xn--fa-hia.de is 127.0.0.1 there), the upstream's certificate
    # is for xn--fa-hia.de only besides its address: the call passes if the name the client
    # connects to, verifies and sends as SNI and Host is that one name.
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    port = https_url.rpartition(":")[2]
    async with open_client(
        http_client_base_url=f"https://{INTERNATIONAL_NAME}:{port}",
        http_client_ca_bundle=certificates.authority,
    ) as client:
        response = await client.get("/idna")

    assert proxy.seen == [(f"CONNECT {INTERNATIONAL_ASCII}:{port}", None)]
    assert server_names == [INTERNATIONAL_ASCII]
    assert echoed(response)["headers"]["host"] == f"{INTERNATIONAL_ASCII}:{port}"


async def test_ssl_cert_file_is_honoured_as_httpx_does(
    open_client: Callable[..., Any],
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    https_url: str,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.authority))
    async with open_client(http_client_base_url=https_url) as client:
        response = await client.get("/from/ssl-cert-file")

    assert json.loads(response.content)["path"] == "/from/ssl-cert-file"
