"""Who is calling, and what they may do: modes, API keys, JWT, scopes, tenants.

Modes (``REALTIME_AUTH``):

- ``none``: everybody is the anonymous principal with every scope. Allowed
  only on a loopback address (``realtime serve`` refuses anything else unless
  ``--insecure``; see :func:`check_exposure`).
- ``apikey``: a bearer token whose SHA-256 (hex) is listed in
  ``REALTIME_API_KEYS`` with its scopes and optional tenant. Only hashes are
  configured, so the settings never hold a usable key.
- ``jwt``: a JSON Web Token signed with HS256 (``REALTIME_JWT_SECRET``) or
  RS256/ES256 (``REALTIME_JWT_PUBLIC_KEY`` PEM, or ``REALTIME_JWT_JWKS_FILE``
  with keys chosen by ``kid``). ``exp`` is required; ``nbf``, ``iat``, ``aud``
  (``REALTIME_JWT_AUDIENCE``) and ``iss`` (``REALTIME_JWT_ISSUER``) are checked,
  with ``REALTIME_JWT_LEEWAY_SECONDS`` of clock skew. Scopes come from the
  ``REALTIME_SCOPES_CLAIM`` claim (space-separated or a list), the tenant from
  ``REALTIME_TENANT_CLAIM``.
- ``apikey+jwt``: either; a token that looks like a JWT (three dot-separated
  parts) is verified as one, anything else is looked up as an API key.

Scopes: ``read:<collection>``, ``write:<collection>``, ``read:*``, ``write:*``
and ``admin`` (everything). REST reads and WebSocket subscriptions need read,
REST writes need write.

Tenants: a principal with a tenant sees and writes only documents whose
tenant field (``REALTIME_TENANT_FIELD``, default the claim name) holds its
tenant: :class:`Tenant` ANDs that into every filter, stamps it on every
written document, and checks it on every event a subscription receives.

Tokens are secrets: nothing here logs them or puts them in an error message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from realtime.config import Settings
from realtime.errors import RealtimeError

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "ANONYMOUS",
    "AuthConfigError",
    "Authenticator",
    "Forbidden",
    "Principal",
    "RedactCredentials",
    "Tenant",
    "Unauthenticated",
    "bearer_token",
    "check_exposure",
    "install_log_redaction",
    "is_loopback",
    "token_from_subprotocols",
]

Action = Literal["read", "write"]

#: Longest token accepted (a JWT with many scopes stays well below this).
MAX_TOKEN_LENGTH: Final = 8192
#: The subprotocol a browser offers next to ``bearer.<token>``; the server selects it.
SUBPROTOCOL: Final = "realtime"
_BEARER_PREFIX: Final = "bearer."


class Unauthenticated(RealtimeError):
    """No credentials, or credentials that are not valid (401 / close 4401)."""

    status = 401
    slug = "unauthenticated"

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate: Bearer``."""
        return {"WWW-Authenticate": 'Bearer realm="realtime"'}


class Forbidden(RealtimeError):
    """Valid credentials without the scope (or tenant) for this (403 / ``forbidden``)."""

    status = 403
    slug = "forbidden"


class AuthConfigError(ValueError):
    """The security settings cannot work (a bad key, file or combination)."""


# ----------------------------------------------------------------------- tenants


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant: the documents whose ``field`` equals ``value``."""

    field: str
    value: str

    def clause(self) -> dict[str, Any]:
        """The filter clause ``{field: value}``."""
        return {self.field: self.value}

    def restrict(self, filter: Mapping[str, Any]) -> dict[str, Any]:
        """``filter`` ANDed with the tenant clause (the clause alone for an empty filter)."""
        if not filter:
            return self.clause()
        return {"$and": [dict(filter), self.clause()]}

    def owns(self, doc: Mapping[str, Any] | None) -> bool:
        """True if ``doc`` is known and belongs to this tenant (exact equality)."""
        if doc is None:
            return False
        value = doc.get(self.field)
        return isinstance(value, str) and value == self.value


# --------------------------------------------------------------------- principals


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its scopes, tenant and expiry.

    ``id`` names it for rate limits and logs (``anonymous``, ``key:<name>``,
    ``jwt:<sub>``); it never contains the token.
    """

    id: str
    scopes: frozenset[str]
    tenant: Tenant | None = None
    #: Unix time after which the credentials are no longer valid (None: never).
    expires: float | None = None
    kind: Literal["none", "apikey", "jwt"] = "none"

    def can(self, action: Action, collection: str) -> bool:
        """True if the principal may ``action`` (read/write) ``collection``."""
        scopes = self.scopes
        return ("admin" in scopes or f"{action}:*" in scopes
                or f"{action}:{collection}" in scopes)

    def require(self, action: Action, collection: str) -> None:
        """Raises Forbidden unless :meth:`can`."""
        if not self.can(action, collection):
            raise Forbidden(f"the credentials do not allow {action} on {collection[:80]!r} "
                            f"(needs scope {action}:{collection[:80]} or {action}:*)")

    def can_any(self, collection: str) -> bool:
        """True if the principal may read or write ``collection``."""
        return self.can("read", collection) or self.can("write", collection)


#: The principal of mode ``none``: every scope, no tenant.
ANONYMOUS: Final = Principal(id="anonymous", scopes=frozenset({"admin"}))


# ------------------------------------------------------------------- credentials


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    Raises:
        Unauthenticated: a header with another scheme or no token.
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("use Authorization: Bearer <api key or JWT>")
    return token


def token_from_subprotocols(offered: list[str]) -> tuple[str | None, str | None]:
    """``(token, subprotocol to select)`` from a WebSocket's ``Sec-WebSocket-Protocol``.

    A browser, which cannot set headers on a WebSocket, offers
    ``["realtime", "bearer.<token>"]``; the server selects ``realtime`` (never
    the token, which would be echoed back).
    """
    token = None
    for item in offered:
        if item[:len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX and len(item) > len(_BEARER_PREFIX):
            token = item[len(_BEARER_PREFIX):]
    return token, (SUBPROTOCOL if SUBPROTOCOL in offered else None)


def is_loopback(host: str) -> bool:
    """True if ``host`` (an address or ``localhost``) is a loopback address."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse ``auth=none`` on a non-loopback host unless ``insecure``.

    Raises:
        AuthConfigError: with a message that says what to do.
    """
    if settings.loopback_only and not is_loopback(settings.host):
        raise AuthConfigError(
            f"refusing to serve on {settings.host} without authentication: set "
            "REALTIME_AUTH=apikey or jwt (docs/security.md), bind to 127.0.0.1, or pass "
            "--insecure (REALTIME_INSECURE=true) if the network is trusted")


# -------------------------------------------------------------------- verifiers


def _scopes_of(value: Any) -> frozenset[str]:
    """Scopes from a claim: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    if value is None:
        return frozenset()
    raise Unauthenticated("the token's scopes claim is not a string or a list of strings")


def _algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise AuthConfigError("RSA public keys must have at least 2048 bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthConfigError("ES256 needs a P-256 public key")
        return "ES256"
    raise AuthConfigError("the JWT public key must be an RSA or P-256 EC public key")


def _load_pem(value: str) -> Any:
    text = value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()
    try:
        return load_pem_public_key(text.encode())
    except ValueError as exc:
        raise AuthConfigError(f"REALTIME_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None


@dataclass(slots=True)
class _JwtKeys:
    """The verification key(s): one key, or a JWKS by ``kid``."""

    single: tuple[Any, str] | None = None
    by_kid: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def key_for(self, token: str) -> tuple[Any, str]:
        if self.single is not None:
            return self.single
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.by_kid:
            return self.by_kid[kid]
        if kid is None and len(self.by_kid) == 1:
            return next(iter(self.by_kid.values()))
        raise Unauthenticated("the token's key id is unknown")


def _load_jwks(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        data = json.loads(path.read_text())
        jwks = jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise AuthConfigError(f"cannot load REALTIME_JWT_JWKS_FILE {str(path)!r}: {exc}") from None
    keys: dict[str, tuple[Any, str]] = {}
    for jwk in jwks.keys:
        if jwk.key_type not in ("RSA", "EC"):
            continue  # never a symmetric key from a key set
        algorithm = _algorithm_for(jwk.key)
        if jwk.algorithm_name != algorithm:
            raise AuthConfigError(f"JWKS key {jwk.key_id!r}: algorithm {jwk.algorithm_name} "
                                  "is not supported (RS256, ES256)")
        keys[str(jwk.key_id or len(keys))] = (jwk.key, algorithm)
    if not keys:
        raise AuthConfigError(f"REALTIME_JWT_JWKS_FILE {str(path)!r} has no RSA or EC key")
    return keys


# ----------------------------------------------------------------- authenticator


class Authenticator:
    """Turns a token into a :class:`Principal` according to the settings.

    Built once per app (:func:`realtime.app.create_app`); verifying is pure CPU.

    Raises (constructor):
        AuthConfigError: a key or key file that cannot be used.
    """

    _KEY_KINDS: ClassVar[frozenset[str]] = frozenset({"apikey", "apikey+jwt"})

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth
        self._settings = settings
        self._tenant_field = settings.tenant_key
        self._keys: dict[str, Principal] = {}
        if settings.auth in self._KEY_KINDS:
            for entry in settings.api_keys:
                label = entry.name or entry.sha256[:12]
                tenant = Tenant(self._tenant_field, entry.tenant) if entry.tenant else None
                self._keys[entry.sha256] = Principal(
                    id=f"key:{label}", scopes=frozenset(entry.scopes), tenant=tenant,
                    kind="apikey")
        self._jwt: _JwtKeys | None = None
        if "jwt" in settings.auth:
            if settings.jwt_secret is not None:
                self._jwt = _JwtKeys(single=(settings.jwt_secret.get_secret_value().encode(),
                                             "HS256"))
            elif settings.jwt_public_key is not None:
                key = _load_pem(settings.jwt_public_key)
                self._jwt = _JwtKeys(single=(key, _algorithm_for(key)))
            elif settings.jwt_jwks_file is not None:
                self._jwt = _JwtKeys(by_kid=_load_jwks(settings.jwt_jwks_file))

    @property
    def enabled(self) -> bool:
        """False in mode ``none``."""
        return self.mode != "none"

    def authenticate(self, token: str | None) -> Principal:
        """The principal for ``token`` (None: no credentials were sent).

        In mode ``none`` every caller is :data:`ANONYMOUS`, whatever it sends.

        Raises:
            Unauthenticated: no token, an unknown key, a bad or expired JWT, or
                (``tenant_required``) no tenant.
        """
        if self.mode == "none":
            return ANONYMOUS
        if token is None:
            raise Unauthenticated("credentials required: Authorization: Bearer <api key or JWT>")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("the token is too long")
        if self._jwt is not None and (self.mode == "jwt" or token.count(".") == 2):
            principal = self._verify_jwt(token, self._jwt)
        elif self.mode in self._KEY_KINDS:
            found = self._keys.get(hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())
            if found is None:
                raise Unauthenticated("unknown API key")
            principal = found
        else:  # pragma: no cover - modes are validated by Settings
            raise Unauthenticated("credentials are not accepted")
        if self._settings.tenant_required and principal.tenant is None:
            raise Unauthenticated("the credentials carry no tenant")
        return principal

    def _verify_jwt(self, token: str, keys: _JwtKeys) -> Principal:
        settings = self._settings
        key, algorithm = keys.key_for(token)
        options: Options = {"require": ["exp"],
                            "verify_aud": settings.jwt_audience is not None}
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=settings.jwt_audience,
                issuer=settings.jwt_issuer, leeway=settings.jwt_leeway_seconds,
                options=options)
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        if not isinstance(claims, dict):  # pragma: no cover - PyJWT returns a dict
            raise Unauthenticated("invalid token")
        scopes = _scopes_of(claims.get(settings.scopes_claim))
        tenant = None
        raw_tenant = claims.get(settings.tenant_claim)
        if raw_tenant is not None:
            if not isinstance(raw_tenant, str) or not raw_tenant or len(raw_tenant) > 256:
                raise Unauthenticated("the token's tenant claim is not a non-empty string")
            tenant = Tenant(self._tenant_field, raw_tenant)
        # Whole seconds, as PyJWT checks ``exp`` (int(exp)): the socket closes at the
        # moment a new connection with this token starts being refused.
        exp = claims.get("exp")
        expires = int(exp) + settings.jwt_leeway_seconds if isinstance(exp, int | float) \
            else None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            sub = hashlib.sha256(token.encode()).hexdigest()[:16]
        ident = sub
        return Principal(id=f"jwt:{ident[:128]}", scopes=scopes, tenant=tenant,
                         expires=expires, kind="jwt")

    def expired(self, principal: Principal, now: float | None = None) -> bool:
        """True if ``principal``'s credentials have expired."""
        if principal.expires is None:
            return False
        return (time.time() if now is None else now) >= principal.expires


# ----------------------------------------------------------------------- logging

_REDACTIONS: Final = (
    # Handshake headers logged by the WebSocket library at DEBUG ("< authorization: ...").
    (re.compile(r"(?im)^([<>] (?:proxy-)?(?:authorization|cookie|set-cookie|"
                r"sec-websocket-protocol): ).*$"), r"\1[redacted]"),
    # "Bearer <token>" and the "bearer.<token>" subprotocol anywhere.
    (re.compile(r"(?i)(bearer[ .])[^\s\"',]+"), r"\1[redacted]"),
    # An auth message's token in a logged frame ('{"op":"auth","token":"..."}').
    (re.compile(r'("token"\s*:\s*")[^"]*'), r"\1[redacted]"),
)
#: Loggers of the server stack that may log handshake headers or frames at DEBUG.
REDACTED_LOGGERS: Final = ("uvicorn.error", "uvicorn", "websockets.server", "websockets")


class RedactCredentials(logging.Filter):
    """Rewrites log records that would show a credential (tokens are never logged).

    uvicorn's WebSocket implementation logs every handshake header and every
    frame at DEBUG; this filter blanks ``Authorization``, ``Cookie`` and
    ``Sec-WebSocket-Protocol`` values, ``Bearer`` tokens and the ``token`` of
    an ``auth`` message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        redacted = message
        for pattern, replacement in _REDACTIONS:
            redacted = pattern.sub(replacement, redacted)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactCredentials` to the server stack's loggers (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
