"""Bearer tokens against a stand-in identity provider (tests/identity_provider.py): valid ones
pass, every kind of bad one is a 401 (never a 500), a missing scope is a 403, keys rotate
without a restart, a flood of unknown key ids does not become a flood of fetches, and a provider
that is down does not fail tokens signed with a key fetched before."""

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.auth import InvalidTokenError, Principal, require_token, verify
from {{ cookiecutter.package_name }}.resources.auth_keys import AuthKeys, KeysUnavailableError
from {{ cookiecutter.package_name }}.resources.lifecycle import ResourceUnavailableError
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import scrape, serve
from tests.identity_provider import AUDIENCE, IdentityProvider, SigningKey, identity_provider
from tests.processes import finish, running, wait_until_ready
from tests.servers import async_wait_until, free_port, wait_until


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    """A provider of the test's own, to rotate, slow down or take down."""
    with identity_provider() as provider:
        yield provider


@pytest.fixture
def auth_settings(
    provider: IdentityProvider, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(auth_issuer=provider.issuer, **overrides)

    return make


def app_with_test_routes(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/test/scoped", dependencies=[require_token("test:scope")])
    async def scoped() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/test/principal")
    async def principal(principal: Principal) -> dict[str, Any]:
        return {"subject": principal.subject, "claims": sorted(principal.claims)}

    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    # The client's own header (serve's) is replaced by the test's.
    return await client.get("/me", headers=bearer(token))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A token put together by hand, as an attacker would: any header, any signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def valid_claims(provider: IdentityProvider) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": provider.issuer, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60}


def bad_tokens(provider: IdentityProvider) -> dict[str, tuple[str, str]]:
    """Each kind of bad token, and the outcome its refusal is counted as."""
    key = provider.key
    public_pem = key.private_key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    impostor = SigningKey(key.key_id, SigningKey.new().private_key, "RS256")
    return {
        "expired": (provider.token(iat=now - 600, exp=now - 300), "expired"),
        "not yet valid": (provider.token(nbf=now + 300), "not_yet_valid"),
        "wrong audience": (provider.token(aud="another-service"), "wrong_audience"),
        "wrong issuer": (provider.token(iss="https://evil.example"), "wrong_issuer"),
        "no subject": (provider.token(sub=None), "missing_claim"),
        "alg none": (
            hand_made({"alg": "none", "kid": key.key_id}, valid_claims(provider), lambda _: b""),
            "bad_algorithm",
        ),
        "HS256 keyed with the public key": (
            hand_made(
                {"alg": "HS256", "kid": key.key_id, "typ": "JWT"},
                valid_claims(provider),
                lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
            ),
            "bad_algorithm",
        ),
        "signed by another key": (provider.token(key=impostor), "bad_signature"),
        "tampered claims": (tamper(provider.token()), "bad_signature"),
        "garbage": ("not.a.token", "malformed"),
        "no key id": (
            hand_made({"alg": "RS256"}, valid_claims(provider), lambda _: b"x"),
            "malformed",
        ),
        "100 kB": ("e" * 100_000, "too_large"),
        "empty subject": (provider.token(subject=""), "missing_claim"),
        "exp a numeric string": (provider.token(exp=str(now + 300)), "malformed"),
    }


def tamper(token: str) -> str:
    header, claims, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    return ".".join([header, b64(json.dumps(decoded | {"sub": "admin"}).encode()), signature])


KINDS = [
    "expired",
    "not yet valid",
    "wrong audience",
    "wrong issuer",
    "no subject",
    "alg none",
    "HS256 keyed with the public key",
    "signed by another key",
    "tampered claims",
    "garbage",
    "no key id",
    "100 kB",
    "empty subject",
    "exp a numeric string",
]


async def test_a_valid_token_names_its_subject_and_scopes(
    provider: IdentityProvider, auth_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    token = provider.token(scopes=["notes:write", "other"], subject="alice")
    async with serve(app_with_test_routes(auth_settings())) as client:
        response = await get_me(client, token)
        principal = await client.get("/test/principal", headers=bearer(token))

    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "alice", "scopes": ["notes:write", "other"]}
    assert "aud" in principal.json()["claims"]
    [line] = [e for e in events if e["event"] == "http.request" and e["path"] == "/me"]
    assert line["subject"] == "alice"
    assert token not in json.dumps([str(e) for e in events])


async def test_the_subject_stays_with_its_request(
    provider: IdentityProvider, auth_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    # The client calls the app in its own task, as a server serves a connection's requests one
    # after another in one task: what a request bound must not reach the next one.
    async with serve(app_with_test_routes(auth_settings())) as client:
        await get_me(client, provider.token(subject="alice"))
        await get_me(client, "garbage")
        await client.get("/health/live", headers={"Authorization": ""})

    lines = [e for e in events if e["event"] == "http.request"]
    assert [(line.get("subject"), line.get("auth_refused")) for line in lines] == [
        ("alice", None),
        (None, "malformed"),
        (None, None),
    ]


async def test_entra_ids_scp_claim_is_read_too(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    async with serve(app_with_test_routes(auth_settings())) as client:
        as_string = await get_me(client, provider.token(scp="a b"))
        as_list = await get_me(client, provider.token(scp=["c"]))

    assert as_string.json()["scopes"] == ["a", "b"]
    assert as_list.json()["scopes"] == ["c"]


async def test_scopes_are_separated_by_spaces_only(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    # RFC 6749, 3.3: a no-break space or a tab is part of a scope, not between two.
    async with serve(app_with_test_routes(auth_settings())) as client:
        response = await get_me(client, provider.token(scopes=["x\u00a0test:scope\ty"]))
        scoped = await client.get(
            "/test/scoped", headers=bearer(provider.token(scopes=["x\u00a0test:scope"]))
        )

    assert response.json()["scopes"] == ["x\u00a0test:scope\ty"]
    assert scoped.status_code == 403


async def test_no_token_is_a_401_with_the_bare_challenge(
    auth_settings: Callable[..., Settings],
) -> None:
    async with serve(app_with_test_routes(auth_settings())) as client:
        response = await client.get("/me", headers={"Authorization": ""})
        basic = await client.get("/me", headers={"Authorization": "Basic dXNlcjpwdw=="})

    for answer in (response, basic):
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_token_is_a_401_and_never_a_500(
    kind: str, provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    token, outcome = bad_tokens(provider)[kind]
    async with serve(app_with_test_routes(auth_settings())) as client:
        before = await scrape(client)
        response = await get_me(client, token)
        after = await scrape(client)

    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    counted = "auth_verifications_total"
    assert after.value(counted, outcome=outcome) - before.value(counted, outcome=outcome) == 1
    assert token[:50] not in response.text + challenge


async def test_a_token_without_the_scope_is_a_403(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    async with serve(app_with_test_routes(auth_settings())) as client:
        without = await client.get("/test/scoped", headers=bearer(provider.token(scopes=["x"])))
        with_it = await client.get(
            "/test/scoped", headers=bearer(provider.token(scopes=["test:scope"]))
        )
{%- if cookiecutter.use_postgres %}
        note = await client.post(
            "/notes", json={"text": "t"}, headers=bearer(provider.token(scopes=[]))
        )
        read = await client.get("/notes/1", headers=bearer(provider.token(scopes=[])))
{%- endif %}

    assert without.status_code == 403
    assert (
        without.headers["WWW-Authenticate"]
        == 'Bearer error="insufficient_scope", scope="test:scope"'
    )
    assert with_it.status_code == 200
{%- if cookiecutter.use_postgres %}
    # Writing a note needs notes:write; reading one, any valid token.
    assert note.status_code == 403
    assert read.status_code in (200, 404)
{%- endif %}


async def test_the_example_routes_need_a_token_and_the_probes_do_not(
    auth_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(auth_settings())) as client:
        anonymous = {"Authorization": ""}
        protected = [
            await client.post("/background/example", json={"seconds": 0}, headers=anonymous),
            await client.get("/upstream/echo", headers=anonymous),
        ]
        open_ = [
            await client.get(path, headers=anonymous)
            for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json")
        ]

    assert [response.status_code for response in protected] == [401, 401]
    assert [response.status_code for response in open_] == [200, 200, 200, 200]
    schemes = open_[-1].json()["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A JWT of the identity provider (AUTH_ISSUER)",
        }
    }


async def test_a_rotated_key_is_fetched_without_a_restart(
    provider: IdentityProvider, auth_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    async with serve(app_with_test_routes(auth_settings(auth_keys_min_refresh_seconds=0))) as c:
        before = await get_me(c, provider.token())
        provider.rotate()
        after = await get_me(c, provider.token())

    assert (before.status_code, after.status_code) == (200, 200)
    assert provider.jwks_fetches == 2
    reasons = [e["reason"] for e in events if e["event"] == "auth.keys_refreshed"]
    assert reasons == ["startup", "unknown_key"]


async def test_a_flood_of_unknown_key_ids_costs_the_provider_nothing_within_the_interval(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    # The default AUTH_KEYS_MIN_REFRESH_SECONDS (30): the startup fetch was just now.
    made_up = [
        provider.token(key=SigningKey(f"made-up-{n}", provider.key.private_key, "RS256"))
        for n in range(64)
    ]
    async with serve(app_with_test_routes(auth_settings())) as client:
        before = await scrape(client)
        responses = await asyncio.gather(*(get_me(client, token) for token in made_up))
        after = await scrape(client)

    assert {response.status_code for response in responses} == {401}
    assert provider.jwks_fetches == 1
    counted, outcome = "auth_verifications_total", "unknown_key"
    assert after.value(counted, outcome=outcome) - before.value(counted, outcome=outcome) == 64


async def test_concurrent_refreshes_share_one_fetch(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    settings = auth_settings()
    async with httpx.AsyncClient() as http_client:
        keys = AuthKeys(settings, http_client)
        await asyncio.gather(*(keys.refresh("test") for _ in range(64)))
        await keys.refresh("test")

    assert provider.jwks_fetches == 2


async def test_a_provider_that_is_down_fails_no_token_of_a_known_key(
    provider: IdentityProvider, auth_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = auth_settings(auth_keys_refresh_seconds=0.05)
    async with serve(app_with_test_routes(settings)) as client:
        provider.down = True

        async def refresh_failed() -> bool:
            return any(e["event"] == "auth.keys_refresh_failed" for e in events)

        await async_wait_until(refresh_failed, within=5, message="no refresh was tried")
        response = await get_me(client, provider.token())
        ready = await client.get("/health/ready")
        scraped = await scrape(client)

    assert response.status_code == 200
    assert ready.status_code == 200
    assert scraped.value("auth_key_refreshes_total", outcome="failed") >= 1
    assert scraped.value("auth_keys_fetched_timestamp_seconds") > 0


async def test_startup_fails_within_the_timeout_when_the_provider_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        auth_issuer=f"http://127.0.0.1:{free_port()}/realms/none", startup_timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(ResourceUnavailableError, match="auth_keys: not available"):
        async with serve(create_app(settings)):
            pass
    assert time.monotonic() - started < 1.0 + 1.5


async def test_a_discovery_document_of_another_issuer_stops_startup(
    provider: IdentityProvider, make_settings: Callable[..., Settings]
) -> None:
    # The provider serves its discovery document under its own issuer; asked as another, the
    # names differ, and its keys are not trusted.
    other = provider.issuer.replace("/realms/test", "/realms/test/")
    settings = make_settings(auth_issuer=other, startup_timeout=0.5)
    with pytest.raises(ResourceUnavailableError, match="names issuer"):
        async with serve(create_app(settings)):
            pass


async def fetch_keys(settings: Settings) -> AuthKeys:
    async with httpx.AsyncClient() as http_client:
        keys = AuthKeys(settings, http_client)
        await keys.refresh("test")
        return keys


async def test_a_discovered_key_set_over_plain_http_from_afar_is_refused(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    provider.jwks_uri = "http://idp.example.com/jwks"  # never fetched: refused before
    with pytest.raises(KeysUnavailableError, match="jwks_uri: an https:// URL"):
        await fetch_keys(auth_settings())
    assert provider.jwks_fetches == 0


async def test_a_compressed_key_set_is_refused_before_it_is_inflated(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    # Inflated in memory before its size could be counted, 200 kB of gzip are 200 MB.
    provider.gzip = True
    with pytest.raises(KeysUnavailableError, match="a compressed answer"):
        await fetch_keys(auth_settings())


async def test_malformed_entries_of_the_key_set_are_left_out(
    provider: IdentityProvider, auth_settings: Callable[..., Settings]
) -> None:
    provider.extra_entries = [
        {"kty": {"not": "a string"}, "kid": "a"},
        {"kty": "EC", "crv": ["P-256"], "kid": "b"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "c"},  # symmetric: never taken
        {"kty": "RSA", "kid": "d", "n": "AQAB", "e": 1},
        "not an object",
    ]
    keys = await fetch_keys(auth_settings())

    assert len(keys) == 1


async def test_a_key_set_url_is_logged_without_its_query(
    provider: IdentityProvider, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    jwks_url = provider.issuer + "/jwks?api_key=s3cret-key"
    async with serve(create_app(make_settings(auth_jwks_url=jwks_url))):
        pass
    provider.down = True
    with pytest.raises(KeysUnavailableError):
        await fetch_keys(make_settings(auth_jwks_url=jwks_url))

    assert "s3cret-key" not in json.dumps([str(e) for e in events])
    [opened] = [
        e for e in events if e["event"] == "resource.opened" and e["resource"] == "auth_keys"
    ]
    assert opened["jwks_url"] == provider.issuer + "/jwks"
    assert any(e["event"] == "auth.keys_refresh_failed" for e in events)


def test_a_pipelined_request_inherits_nothing_of_the_one_before(
    provider: IdentityProvider, service_env: dict[str, str], tmp_path: Path
) -> None:
    # Both requests in one write: the server (httptools) starts the second from the first's
    # task, which once gave it the first's subject in the log.
    service_env["AUTH_ISSUER"] = provider.issuer
    token = provider.token(subject="alice")
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        with socket.create_connection(("127.0.0.1", int(service_env["PORT"])), timeout=10) as s:
            s.sendall(
                f"GET /me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
                "GET /me HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            )

            def both_logged() -> bool:
                requests = [line for line in service.log() if line["event"] == "http.request"]
                return len([line for line in requests if line["path"] == "/me"]) == 2

            wait_until(both_logged, timeout=10, message="the two requests were never logged")
        service.process.send_signal(signal.SIGTERM)
        finish(service)

    lines = [line for line in service.log() if line["event"] == "http.request"]
    first, second = [line for line in lines if line["path"] == "/me"]
    assert (first["status"], first.get("subject")) == (200, "alice")
    assert (second["status"], second.get("subject")) == (401, None)
    assert second["request_id"] != first["request_id"]


@pytest.fixture
def keys_of(provider: IdentityProvider, auth_settings: Callable[..., Settings]) -> AuthKeys:
    """The provider's keys, fetched once; no key id makes them fetch again for an hour."""
    return asyncio.run(fetch_keys(auth_settings(auth_keys_min_refresh_seconds=3600)))


def json_segment(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return values.map(lambda value: b64(json.dumps(value).encode()))


ALGORITHMS = ["RS256", "ES256", "PS512", "EdDSA", "HS256", "none", "None", "rs256", ""]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def tokens(key_id: str) -> st.SearchStrategy[str]:
    """Strings from garbage to well-formed tokens with any header, claims and signature."""
    header = st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(ALGORITHMS) | JSON_VALUES,
            "kid": st.just(key_id) | JSON_VALUES,
            "crit": JSON_VALUES,
            "b64": st.booleans(),
        },
    )
    segments = st.tuples(
        json_segment(header) | st.text(max_size=40),
        json_segment(
            st.dictionaries(
                st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "scope", "scp"]),
                JSON_VALUES,
            )
        ),
        st.binary(max_size=300).map(b64),
    )
    return st.text(max_size=300) | segments.map(".".join)


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_whatever_the_token_verification_refuses_it_cleanly(
    data: st.DataObject, provider: IdentityProvider, keys_of: AuthKeys
) -> None:
    # Refused with InvalidTokenError, the 401: any other exception would be a 500.
    token = data.draw(tokens(provider.key.key_id))
    with pytest.raises(InvalidTokenError):
        asyncio.run(verify(token, keys_of, keys_of.settings))
