"""A stand-in identity provider for the tests: its discovery document and key set (JWKS) served
over HTTP on 127.0.0.1, keys the test makes, and tokens signed with them.

    provider = IdentityProvider()          # serving, with one RSA key
    token = provider.token(scopes=["notes:write"])
    client.get("/notes/1", headers={"Authorization": f"Bearer {token}"})

For development, `python -m tests.identity_provider` serves one on 127.0.0.1:8081 (the
provider of `.env.example`) and prints a token for it, valid for a day. Its key is made anew
at each start: restart the service after it. A stand-in for a provider, never a provider.
"""

import gzip
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "{{ cookiecutter.project_slug }}"
DEVELOPMENT_PORT = 8081  # .env.example's AUTH_ISSUER
_key_ids = itertools.count(1)


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Any
    algorithm: str

    @classmethod
    def new(cls, algorithm: str = "RS256") -> Self:
        key_id = f"test-key-{next(_key_ids)}"
        if algorithm == "ES256":
            return cls(key_id, ec.generate_private_key(ec.SECP256R1()), algorithm)
        return cls(
            key_id, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm
        )

    def jwk(self) -> dict[str, Any]:
        to_jwk = ECAlgorithm.to_jwk if self.algorithm.startswith("ES") else RSAAlgorithm.to_jwk
        public: dict[str, Any] = to_jwk(self.private_key.public_key(), as_dict=True)
        return public | {"kid": self.key_id, "use": "sig", "alg": self.algorithm}


class IdentityProvider:
    """Serves `/.well-known/openid-configuration` and `/jwks` for the keys in `published`."""

    def __init__(self, port: int = 0) -> None:
        self.key = SigningKey.new()
        self.published = [self.key]
        self.jwks_fetches = 0
        self.down = False  # then every request is answered 503
        # What tests of a misbehaving provider change: the discovery document's jwks_uri,
        # entries of the key set besides the keys, a compressed key set.
        self.jwks_uri: str | None = None
        self.extra_entries: list[Any] = []
        self.gzip = False
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}/realms/test"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def token(
        self,
        *,
        scopes: list[str] | None = None,
        key: SigningKey | None = None,
        subject: str = "user-1",
        lifetime: float = 300,
        **claims: Any,
    ) -> str:
        """A token as the provider issues them; `claims` override or add (None removes)."""
        key = key or self.key
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + int(lifetime),
            "jti": uuid.uuid4().hex,
        }
        if scopes is not None:
            payload["scope"] = " ".join(scopes)
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.key_id}
        )

    def rotate(self) -> SigningKey:
        """Sign with a new key from now on, and publish only that one."""
        self.key = SigningKey.new()
        self.published = [self.key]
        return self.key

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.removeprefix("/realms/test")
                if provider.down:
                    self._answer(503, {"error": "down"})
                elif path == "/.well-known/openid-configuration":
                    jwks_uri = provider.jwks_uri or provider.issuer + "/jwks"
                    self._answer(200, {"issuer": provider.issuer, "jwks_uri": jwks_uri})
                elif path.partition("?")[0] == "/jwks":
                    provider.jwks_fetches += 1
                    keys = [key.jwk() for key in provider.published] + provider.extra_entries
                    self._answer(200, {"keys": keys}, compress=provider.gzip)
                else:
                    self._answer(404, {"error": "not found"})

            def _answer(
                self, status: int, document: dict[str, Any], *, compress: bool = False
            ) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                if compress:
                    body = gzip.compress(body)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output quiet."""

        return Handler


@contextmanager
def identity_provider() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    try:
        yield provider
    finally:
        provider.close()


def main() -> None:
    provider = IdentityProvider(port=DEVELOPMENT_PORT)
    token = provider.token(scopes=["notes:write"], subject="developer", lifetime=24 * 3600)
    print(f"AUTH_ISSUER={provider.issuer}\nAUTH_AUDIENCE={AUDIENCE}\n\nA token:\n{token}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        provider.close()


if __name__ == "__main__":
    main()
