"""Who is calling: the bearer token of a request, verified against the identity provider's keys
(resources/auth_keys.py) by PyJWT, and the principal it names, for routes to depend on.

    @router.get("/things")
    async def things(principal: Principal) -> ...                 # any valid token

    @router.post("/things", dependencies=[require_token("things:write")])
    async def add_thing(...) -> ...                               # a token with that scope

A request without a valid token is a 401 with `WWW-Authenticate: Bearer`; a valid token without
the scopes a route asks for is a 403. The token itself is never logged nor echoed.
"""

from dataclasses import dataclass, field
from typing import Annotated, Any, cast

import jwt
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from {{ cookiecutter.package_name }}.metrics import AUTH_VERIFICATIONS
from {{ cookiecutter.package_name }}.middleware import bind_request_log_fields
from {{ cookiecutter.package_name }}.resources.auth_keys import AuthKeys
from {{ cookiecutter.package_name }}.settings import Settings

# Declares the scheme in the OpenAPI document (the docs' "Authorize" button). Not auto_error:
# its 403 for a missing header would be the wrong status (RFC 6750 asks for a 401).
_bearer = HTTPBearer(auto_error=False, description="A JWT of the identity provider (AUTH_ISSUER)")


@dataclass(frozen=True)
class AuthenticatedPrincipal:
    subject: str
    scopes: frozenset[str]
    claims: dict[str, Any] = field(repr=False)


# Why a token is refused: the metric's label, and what the client is told (always one of these
# fixed texts: nothing of the token itself is echoed).
REFUSALS = {
    "malformed": "the token is malformed",
    "too_large": "the token is too large",
    "bad_algorithm": "the token's algorithm is not accepted for its key",
    "unknown_key": "the token's key is unknown",
    "bad_signature": "the token's signature is invalid",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "wrong_audience": "the token is not for this service",
    "wrong_issuer": "the token's issuer is not trusted",
    "missing_claim": "the token lacks a required claim",
    "invalid": "the token is invalid",
}
# PyJWT's errors by the refusal they count as (the first that matches; else "invalid").
_REFUSALS_OF_ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.DecodeError, "malformed"),
]


class InvalidTokenError(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(REFUSALS[outcome])
        self.outcome = outcome


async def verify(token: str, keys: AuthKeys, settings: Settings) -> AuthenticatedPrincipal:
    """The principal of a valid token; InvalidTokenError for any other."""
    if len(token) > settings.auth_max_token_bytes:
        raise InvalidTokenError("too_large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidTokenError("malformed") from None
    key_id, algorithm = header.get("kid"), header.get("alg")
    if not isinstance(key_id, str) or not isinstance(algorithm, str):
        raise InvalidTokenError("malformed")
    # Before the key is looked up: `none`, HMAC and the like never cost a refresh of the keys.
    if algorithm not in settings.auth_algorithms:
        raise InvalidTokenError("bad_algorithm")
    signing_key = await keys.get(key_id)
    if signing_key is None:
        raise InvalidTokenError("unknown_key")
    if algorithm not in signing_key.algorithms:
        raise InvalidTokenError("bad_algorithm")
    try:
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=[algorithm],
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway=settings.auth_leeway_seconds,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(_refusal_of(exc)) from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("missing_claim")
    # RFC 7519's NumericDate is a JSON number; PyJWT also takes numeric strings.
    if any(not _is_number(claims.get(name, 0)) for name in ("exp", "nbf", "iat")):
        raise InvalidTokenError("malformed")
    return AuthenticatedPrincipal(subject, _scopes(claims), claims)


def _refusal_of(error: jwt.PyJWTError) -> str:
    kinds = _REFUSALS_OF_ERRORS
    return next((outcome for kind, outcome in kinds if isinstance(error, kind)), "invalid")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth 2's `scope` (separated by spaces, RFC 6749 3.3: no other whitespace), or Entra
    ID's `scp` (a string or a list)."""
    granted = claims.get("scope", claims.get("scp", ""))
    if isinstance(granted, str):
        return frozenset(filter(None, granted.split(" ")))
    if isinstance(granted, list):
        return frozenset(scope for scope in granted if isinstance(scope, str))
    return frozenset()


_PRINCIPAL = "auth.principal"  # the scope's key for the principal verified


def _refuse(status_code: int, challenge: str, description: str) -> HTTPException:
    return HTTPException(status_code, description, headers={"WWW-Authenticate": challenge})


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthenticatedPrincipal:
    """The request's principal, verified once per request (a route and its router may both
    ask, for different scopes)."""
    # In the request's own scope: request.state starts as a copy of the lifespan's state for
    # some servers, and as that state itself for others.
    known = request.scope.get(_PRINCIPAL)
    if isinstance(known, AuthenticatedPrincipal):
        return known
    if credentials is None:
        # RFC 6750, 3.1: a request without credentials gets the challenge without an error code.
        AUTH_VERIFICATIONS.labels("missing").inc()
        raise _refuse(status.HTTP_401_UNAUTHORIZED, "Bearer", "a bearer token is required")
    keys = cast(AuthKeys, request.state.auth_keys)
    try:
        principal = await verify(credentials.credentials, keys, keys.settings)
    except InvalidTokenError as exc:
        AUTH_VERIFICATIONS.labels(exc.outcome).inc()
        # On the request's log line (http.request), like the subject of a valid token.
        bind_request_log_fields(request.scope, auth_refused=exc.outcome)
        challenge = f'Bearer error="invalid_token", error_description="{exc}"'
        raise _refuse(status.HTTP_401_UNAUTHORIZED, challenge, str(exc)) from None
    AUTH_VERIFICATIONS.labels("ok").inc()
    bind_request_log_fields(request.scope, subject=principal.subject)
    request.scope[_PRINCIPAL] = principal
    return principal


async def _authenticated(
    required: SecurityScopes,
    principal: Annotated[AuthenticatedPrincipal, Depends(_principal)],
) -> AuthenticatedPrincipal:
    if missing := set(required.scopes) - principal.scopes:
        challenge = f'Bearer error="insufficient_scope", scope="{" ".join(required.scopes)}"'
        lacking = " ".join(sorted(missing))
        raise _refuse(status.HTTP_403_FORBIDDEN, challenge, f"the token lacks scope {lacking}")
    return principal


# The caller, for a route that needs any valid token.
Principal = Annotated[AuthenticatedPrincipal, Security(_authenticated)]


def require_token(*scopes: str) -> Any:
    """A route's or router's dependency: a valid token, with every one of `scopes`."""
    return Security(_authenticated, scopes=list(scopes))
