"""Authentication, scopes, tenants and limits: pure units and the REST matrix.

The matrix tests run every (mode x credential x route) combination against the
real app (in-process ASGI, real database) and compare the outcome with the
rule: reads need ``read:<collection>``, writes need ``write:<collection>``,
``*`` and ``admin`` cover every collection; no or bad credentials are 401.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from realtime.api.headers import API_CSP, DASHBOARD_CSP
from realtime.auth import (
    ANONYMOUS,
    AuthConfigError,
    Authenticator,
    Principal,
    Tenant,
    Unauthenticated,
    bearer_token,
    check_exposure,
    is_loopback,
    token_from_subprotocols,
)
from realtime.cli import app as cli_app
from realtime.config import Settings
from realtime.limits import Limits, RateLimiter, origin_allowed
from tests.helpers import (
    SECRET,
    apikey_settings,
    asgi_client,
    bearer,
    derive,
    hs256,
    jwt_settings,
    sha,
)

DOCS = "/api/collections/{}/documents"

# ------------------------------------------------------------------ keys


def rsa_pair() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def ec_pair() -> tuple[Any, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


BASE = Settings()

# ------------------------------------------------------------------ settings


def test_settings_refuse_unworkable_security() -> None:
    with pytest.raises(ValueError, match="REALTIME_API_KEYS"):
        Settings(auth="apikey")
    with pytest.raises(ValueError, match="exactly one of"):
        Settings(auth="jwt")
    with pytest.raises(ValueError, match="exactly one of"):
        Settings(auth="jwt", jwt_secret=SECRET, jwt_public_key="x")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(auth="jwt", jwt_secret="short")
    with pytest.raises(ValueError, match="64 hex digits"):
        Settings(auth="apikey", api_keys=[{"sha256": "my-plain-key", "scopes": []}])
    with pytest.raises(ValueError, match="bad scope"):
        Settings(auth="apikey", api_keys=[{"sha256": sha("k"), "scopes": ["read:orders x"]}])
    with pytest.raises(ValueError, match="bad scope"):
        Settings(auth="apikey", api_keys=[{"sha256": sha("k"), "scopes": ["delete:*"]}])
    with pytest.raises(ValueError, match="tenant field"):
        Settings(tenant_claim="https://example.com/tenant")
    assert Settings(tenant_claim="https://example.com/tenant", tenant_field="org").tenant_key \
        == "org"
    with pytest.raises(ValueError, match="bad origin"):
        Settings(allowed_origins=["https://example.com/path"])
    with pytest.raises(ValueError, match="needs authentication"):
        Settings(allowed_origins=["*"])
    ok = Settings(auth="apikey", api_keys=[{"sha256": sha("k").upper(), "scopes": ["admin"]}])
    assert ok.api_keys[0].sha256 == sha("k")


def test_settings_errors_never_echo_secrets() -> None:
    with pytest.raises(ValueError, match="32 bytes") as info:
        Settings(mongodb_uri="mongodb://u:DBPASSWORD@h/", auth="jwt",
                 jwt_secret="tooshortsecret")
    assert "tooshortsecret" not in str(info.value)
    assert "DBPASSWORD" not in str(info.value)
    assert "tooshortsecret" not in repr(Settings(auth="jwt", jwt_secret="s" * 40
                                                 + "tooshortsecret"))


def test_loopback_and_exposure() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "a.localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", ""):
        assert not is_loopback(host), host
    check_exposure(Settings())
    check_exposure(Settings(host="0.0.0.0", insecure=True))
    check_exposure(Settings(host="0.0.0.0", auth="jwt", jwt_secret=SECRET))
    with pytest.raises(AuthConfigError, match="--insecure"):
        check_exposure(Settings(host="0.0.0.0"))


def test_serve_refuses_a_public_address_without_auth() -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"],
                                env={"REALTIME_AUTH": "none"})
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.output
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"],
                                env={"REALTIME_AUTH": "jwt"})
    assert result.exit_code == 2
    assert "bad settings" in result.output


# ------------------------------------------------------------- credentials


def test_bearer_and_subprotocol_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in ("Basic dXNlcjpwdw==", "Bearer", "Bearer ", "abc"):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)
    assert token_from_subprotocols([]) == (None, None)
    assert token_from_subprotocols(["realtime", "bearer.a.b.c"]) == ("a.b.c", "realtime")
    assert token_from_subprotocols(["bearer.tok"]) == ("tok", None)
    assert token_from_subprotocols(["bearer."]) == (None, None)


def test_principal_scopes() -> None:
    p = Principal(id="x", scopes=frozenset({"read:orders", "write:logs"}))
    assert p.can("read", "orders")
    assert not p.can("write", "orders")
    assert p.can("write", "logs")
    assert not p.can("read", "logs")
    assert not p.can("read", "orders2")
    star = Principal(id="x", scopes=frozenset({"read:*"}))
    assert star.can("read", "anything")
    assert not star.can("write", "anything")
    assert ANONYMOUS.can("write", "x")
    assert Principal(id="x", scopes=frozenset({"admin"})).can("write", "x")
    assert not Principal(id="x", scopes=frozenset()).can_any("x")


def test_tenant_clause() -> None:
    t = Tenant("tenant", "acme")
    assert t.restrict({}) == {"tenant": "acme"}
    assert t.restrict({"a": 1}) == {"$and": [{"a": 1}, {"tenant": "acme"}]}
    assert t.owns({"tenant": "acme"})
    assert not t.owns({"tenant": "other"})
    assert not t.owns({"tenant": ["acme", "other"]})
    assert not t.owns({})
    assert not t.owns(None)


def test_apikey_mode() -> None:
    settings = apikey_settings(BASE, {
        "k-reader": {"scopes": ["read:orders"], "name": "reader"},
        "k-tenant": {"scopes": ["admin"], "tenant": "acme"},
    })
    auth = Authenticator(settings)
    reader = auth.authenticate("k-reader")
    assert reader.id == "key:reader"
    assert reader.scopes == {"read:orders"}
    assert reader.tenant is None
    tenant = auth.authenticate("k-tenant")
    assert tenant.tenant == Tenant("tenant", "acme")
    assert tenant.id.startswith("key:")
    assert "k-tenant" not in tenant.id
    for bad in (None, "k-reader ", "K-READER", "", "x" * 10_000):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)
    # A JWT is not an API key in mode apikey.
    with pytest.raises(Unauthenticated):
        auth.authenticate(hs256({"scope": "admin"}))
    required = Authenticator(derive(settings, tenant_required=True))
    assert required.authenticate("k-tenant").tenant is not None
    with pytest.raises(Unauthenticated, match="no tenant"):
        required.authenticate("k-reader")


def test_none_mode_is_anonymous_admin() -> None:
    auth = Authenticator(BASE)
    assert not auth.enabled
    assert auth.authenticate(None) is ANONYMOUS
    assert auth.authenticate("whatever") is ANONYMOUS


def test_jwt_hs256_claims() -> None:
    auth = Authenticator(jwt_settings(BASE, jwt_audience="realtime", jwt_issuer="https://idp",
                                      jwt_leeway_seconds=10))
    good = {"aud": "realtime", "iss": "https://idp", "sub": "alice"}
    p = auth.authenticate(hs256({**good, "scope": "read:orders write:orders", "tenant": "t1"}))
    assert p.id == "jwt:alice"
    assert p.scopes == {"read:orders", "write:orders"}
    assert p.tenant == Tenant("tenant", "t1")
    assert p.expires is not None
    assert p.expires > time.time() + 3000
    listed = auth.authenticate(hs256({**good, "scope": ["read:*", "admin"]}))
    assert listed.scopes == {"read:*", "admin"}
    now = int(time.time())
    # Clock skew: 5 s past exp is within the 10 s leeway, 60 s is not.
    assert auth.authenticate(hs256({**good, "exp": now - 5})).expires == pytest.approx(now + 5)
    # A fractional exp expires at its whole second, as PyJWT refuses it from then on.
    fractional = auth.authenticate(hs256({**good, "exp": now + 100.9}))
    assert fractional.expires == now + 110
    assert auth.expired(fractional, now=now + 110)
    assert not auth.expired(fractional, now=now + 109.99)
    cases: dict[str, str] = {
        "expired": hs256({**good, "exp": now - 60}),
        "not valid yet": hs256({**good, "nbf": now + 60}),
        "another audience": hs256({**good, "aud": "other"}),
        "another issuer": hs256({**good, "iss": "https://evil"}),
        "'exp'": jwt.encode({**good}, SECRET, algorithm="HS256"),
        "invalid token": hs256(good, secret="another-secret-" + "y" * 32),
        "invalid token ": "not.a.jwt",
        "tenant claim": hs256({**good, "tenant": 7}),
        "scopes claim": hs256({**good, "scope": {"read": "*"}}),
    }
    for expected, token in cases.items():
        with pytest.raises(Unauthenticated, match=expected.strip()):
            auth.authenticate(token)
    # alg=none is never accepted.
    unsigned = jwt.encode({**good, "exp": now + 60, "scope": "admin"}, None, algorithm="none")
    with pytest.raises(Unauthenticated):
        auth.authenticate(unsigned)


def test_jwt_rs256_es256_and_algorithm_confusion(tmp_path: Path) -> None:
    rsa_key, rsa_pem = rsa_pair()
    ec_key, ec_pem = ec_pair()
    claims = {"exp": int(time.time()) + 60, "scope": "read:*", "sub": "svc"}
    rs = Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_public_key=rsa_pem))
    assert rs.authenticate(jwt.encode(claims, rsa_key, algorithm="RS256")).scopes == {"read:*"}
    # Signed with the wrong key, or another algorithm, or HMAC keyed by the public key.
    with pytest.raises(Unauthenticated):
        rs.authenticate(jwt.encode(claims, rsa_pair()[0], algorithm="RS256"))
    with pytest.raises(Unauthenticated):
        rs.authenticate(jwt.encode(claims, rsa_key, algorithm="RS512"))
    with pytest.raises(Unauthenticated):
        rs.authenticate(jwt.encode(claims, SECRET, algorithm="HS256"))
    pem_file = tmp_path / "ec.pem"
    pem_file.write_text(ec_pem)
    es = Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_public_key=str(pem_file)))
    assert es.authenticate(jwt.encode(claims, ec_key, algorithm="ES256")).id == "jwt:svc"
    with pytest.raises(Unauthenticated):
        es.authenticate(jwt.encode(claims, rsa_key, algorithm="RS256"))
    with pytest.raises(AuthConfigError):
        Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_public_key="-----BEGIN junk"))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    small_pem = small.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(AuthConfigError, match="2048"):
        Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_public_key=small_pem))


def test_jwks_file(tmp_path: Path) -> None:
    rsa_key, _ = rsa_pair()
    ec_key, _ = ec_pair()
    keys = []
    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    auth = Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_jwks_file=path))
    claims = {"exp": int(time.time()) + 60, "scope": "admin"}
    assert auth.authenticate(jwt.encode(claims, rsa_key, "RS256", headers={"kid": "r1"}))
    assert auth.authenticate(jwt.encode(claims, ec_key, "ES256", headers={"kid": "e1"}))
    for token in (jwt.encode(claims, rsa_key, "RS256", headers={"kid": "e1"}),
                  jwt.encode(claims, rsa_key, "RS256", headers={"kid": "nope"}),
                  jwt.encode(claims, rsa_key, "RS256"),
                  jwt.encode(claims, SECRET, "HS256", headers={"kid": "r1"})):
        with pytest.raises(Unauthenticated):
            auth.authenticate(token)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AuthConfigError, match="JWKS"):
        Authenticator(jwt_settings(BASE, jwt_secret=None, jwt_jwks_file=tmp_path / "bad.json"))


def test_apikey_plus_jwt() -> None:
    auth = Authenticator(derive(BASE, auth="apikey+jwt", jwt_secret=SECRET,
                                api_keys=[{"sha256": sha("plain-key"), "scopes": ["read:a"]}]))
    assert auth.authenticate("plain-key").kind == "apikey"
    assert auth.authenticate(hs256({"scope": "read:b"})).kind == "jwt"
    with pytest.raises(Unauthenticated):
        auth.authenticate("other-key")


# ----------------------------------------------------------------- limits


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0], max_keys=2)
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(0.5)
    assert limiter.check("b") == 0.0  # another key, another bucket
    now[0] += 0.5
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    now[0] += 100
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0], "refills to burst only"
    assert limiter.check("a") > 0
    limiter.check("c")  # evicts the least recently used bucket ("b")
    assert set(limiter._buckets) == {"a", "c"}
    assert not RateLimiter(0, 1).enabled
    assert RateLimiter(0, 1).check("x") == 0.0


def test_connection_slots() -> None:
    limits = Limits(apikey_settings(BASE, {"k": {"scopes": []}}, max_connections_per_client=2))
    with limits.connection("1.2.3.4") as a, limits.connection("1.2.3.4") as b:
        assert a
        assert b
        with limits.connection("1.2.3.4") as c:
            assert not c
        with limits.connection("5.6.7.8") as d:
            assert d
        assert limits.connections_of("1.2.3.4") == 2
    assert limits.connections_of("1.2.3.4") == 0
    assert limits.rejections["connections"] == 1
    with Limits(BASE).connection("1.2.3.4") as free:  # mode none: no per-client limits
        assert free


def test_origin_allow_list() -> None:
    none = BASE
    keyed = apikey_settings(BASE, {"k": {"scopes": []}})
    listed = derive(keyed, allowed_origins=["https://app.example.com",
                                            "http://localhost:3000"])
    cases: list[tuple[Settings, str | None, str | None, bool]] = [
        (none, None, "127.0.0.1:8000", True),  # not a browser
        (none, "http://127.0.0.1:8000", "127.0.0.1:8000", True),  # own origin
        (none, "http://localhost:8000", "localhost:8000", True),
        (none, "http://127.0.0.1:8000", "127.0.0.1:8001", False),  # another port
        (none, "http://localhost:8000", "127.0.0.1:8000", False),  # another host
        (none, "https://evil.example", "127.0.0.1:8000", False),
        (none, "null", "127.0.0.1:8000", False),
        (none, "http://evil.example:8000", "evil.example:8000", False),  # DNS rebinding
        (derive(none, insecure=True), "http://box:8000", "box:8000", True),
        (keyed, "https://rt.example.com", "rt.example.com", True),
        (keyed, "https://rt.example.com", "rt.example.com:443", True),
        (keyed, "http://rt.example.com", "rt.example.com:80", True),
        (keyed, "HTTPS://RT.example.com", "rt.EXAMPLE.com", True),
        (keyed, "https://rt.example.com.evil", "rt.example.com", False),
        (keyed, "https://rt.example.com/", "rt.example.com", True),
        (keyed, "https://rt.example.com/x", "rt.example.com", False),
        (keyed, "https://app.example.com", "rt.example.com", False),
        (listed, "https://app.example.com", "rt.example.com", True),
        (listed, "http://localhost:3000", "rt.example.com", True),
        (listed, "http://localhost:3001", "rt.example.com", False),
        (listed, "https://rt.example.com", "rt.example.com", True),  # own stays allowed
        (derive(keyed, allowed_origins=["*"]), "https://any.example", "rt.example.com", True),
        (keyed, "https://rt.example.com", None, False),
        (keyed, "ws://rt.example.com", "rt.example.com", False),
        (keyed, "https://[::1]:8000", "[::1]:8000", True),
    ]
    wrong = [(s.auth, s.allowed_origins, o, h, want) for s, o, h, want in cases
             if origin_allowed(o, h, s) is not want]
    assert wrong == []


# ------------------------------------------------------------------- REST matrix

READ_ROUTES = ("list", "get")
WRITE_ROUTES = ("post", "bulk", "put", "patch", "delete")
ROUTES = ("collections", *READ_ROUTES, *WRITE_ROUTES)


async def call(client: httpx.AsyncClient, route: str, headers: dict[str, str],
               coll: str = "orders") -> httpx.Response:
    docs = DOCS.format(coll)
    if route == "collections":
        return await client.get("/api/collections", headers=headers)
    if route == "list":
        return await client.get(docs, headers=headers)
    if route == "get":
        return await client.get(f"{docs}/seed", headers=headers)
    if route == "post":
        return await client.post(docs, json={"n": 1}, headers=headers)
    if route == "bulk":
        return await client.post(f"{docs}:bulk", json=[{"n": 1}], headers=headers)
    if route == "put":
        return await client.put(f"{docs}/p", json={"n": 2}, headers=headers)
    if route == "patch":
        return await client.patch(f"{docs}/seed", json={"m": 3}, headers=headers)
    if route == "delete":
        return await client.delete(f"{docs}/gone", headers=headers)
    raise AssertionError(route)


def expected(scopes: set[str] | None, route: str, coll: str = "orders") -> int | str:
    """401, 403, or "ok" (any status but 401/403) under the scope rules."""
    if scopes is None:
        return 401
    if route == "collections":
        return "ok"
    action = "read" if route in READ_ROUTES else "write"
    allowed = "admin" in scopes or f"{action}:*" in scopes or f"{action}:{coll}" in scopes
    return "ok" if allowed else 403


SCOPE_SETS: dict[str, set[str]] = {
    "read-orders": {"read:orders"},
    "write-orders": {"write:orders"},
    "read-all": {"read:*"},
    "write-all": {"write:*"},
    "admin": {"admin"},
    "read-other": {"read:logs", "write:logs"},
    "none": set(),
    "rw-orders": {"read:orders", "write:orders"},
}


async def run_matrix(client: httpx.AsyncClient,
                     credentials: dict[str, tuple[dict[str, str], set[str] | None]]
                     ) -> list[str]:
    failures = []
    for name, (headers, scopes) in credentials.items():
        for route in ROUTES:
            r = await call(client, route, headers)
            want = expected(scopes, route)
            got: int | str = r.status_code if r.status_code in (401, 403) else "ok"
            if got != want:
                failures.append(f"{name} {route}: expected {want}, got {r.status_code} {r.text}")
            if r.status_code in (401, 403):
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["status"] == r.status_code
            if r.status_code == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.status_code < 500, r.text
    return failures


async def seed(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.put(f"{DOCS.format('orders')}/seed", json={"n": 0}, headers=headers)
    assert r.status_code in (200, 201), r.text


async def test_matrix_apikey(settings: Settings) -> None:
    keys = {f"key-{name}": {"scopes": sorted(scopes)} for name, scopes in SCOPE_SETS.items()}
    async with asgi_client(apikey_settings(settings, keys)) as client:
        await seed(client, bearer("key-admin"))
        credentials: dict[str, tuple[dict[str, str], set[str] | None]] = {
            name: (bearer(f"key-{name}"), scopes) for name, scopes in SCOPE_SETS.items()}
        credentials["no credentials"] = ({}, None)
        credentials["unknown key"] = (bearer("key-nope"), None)
        credentials["basic auth"] = ({"Authorization": "Basic a2V5LWFkbWluOg=="}, None)
        credentials["jwt in apikey mode"] = (bearer(hs256({"scope": "admin"})), None)
        assert await run_matrix(client, credentials) == []
        listing = await client.get("/api/collections", headers=bearer("key-read-orders"))
        assert listing.json()["collections"] == ["orders"]
        assert (await client.get("/api/collections", headers=bearer("key-none"))).json() == {
            "collections": []}


async def test_matrix_jwt(settings: Settings) -> None:
    async with asgi_client(jwt_settings(settings, jwt_audience="rt")) as client:
        await seed(client, bearer(hs256({"scope": "admin", "aud": "rt"})))
        credentials: dict[str, tuple[dict[str, str], set[str] | None]] = {
            name: (bearer(hs256({"scope": " ".join(sorted(scopes)), "aud": "rt"})), scopes)
            for name, scopes in SCOPE_SETS.items()}
        credentials["list claim"] = (bearer(hs256({"scope": ["read:orders"], "aud": "rt"})),
                                     {"read:orders"})
        credentials["no credentials"] = ({}, None)
        credentials["expired"] = (bearer(hs256({"scope": "admin", "aud": "rt",
                                                "exp": int(time.time()) - 3600})), None)
        credentials["wrong audience"] = (bearer(hs256({"scope": "admin", "aud": "x"})), None)
        credentials["wrong secret"] = (bearer(hs256({"scope": "admin", "aud": "rt"},
                                                    secret="z" * 40)), None)
        assert await run_matrix(client, credentials) == []


async def test_matrix_none_mode(client: httpx.AsyncClient) -> None:
    await seed(client, {})
    assert await run_matrix(client, {"anonymous": ({}, {"admin"}),
                                     "any token": (bearer("whatever"), {"admin"})}) == []


async def test_rate_limit_per_key(settings: Settings) -> None:
    keys = {"k1": {"scopes": ["admin"]}, "k2": {"scopes": ["admin"]}}
    limited = apikey_settings(settings, keys, rate_limit_per_second=0.5, rate_limit_burst=3)
    async with asgi_client(limited) as client:
        codes = [(await client.get("/api/collections", headers=bearer("k1"))).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await client.get("/api/collections", headers=bearer("k1"))
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        # Another key has its own bucket; probes are never limited.
        assert (await client.get("/api/collections", headers=bearer("k2"))).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        # Unauthenticated requests are refused before they cost a token.
        assert (await client.get("/api/collections")).status_code == 401
        metrics = (await client.get("/metrics")).text
        assert 'realtime_security_rejections_total{reason="rate_limited"} 2.0' in metrics
        assert 'realtime_security_rejections_total{reason="unauthenticated"} 1.0' in metrics


# ----------------------------------------------------------------- tenants (REST)


async def test_tenant_isolation_rest(settings: Settings) -> None:
    keys = {"ka": {"scopes": ["admin"], "tenant": "a"},
            "kb": {"scopes": ["read:*", "write:*"], "tenant": "b"},
            "root": {"scopes": ["admin"]}}
    async with asgi_client(apikey_settings(settings, keys)) as client:
        a, b, root = bearer("ka"), bearer("kb"), bearer("root")
        docs = DOCS.format("orders")
        r = await client.post(docs, json={"_id": "a1", "v": 1}, headers=a)
        assert r.status_code == 201
        assert r.json()["tenant"] == "a", "the tenant is stamped on the document"
        r = await client.post(docs, json={"_id": "b1", "v": 1, "tenant": "b"}, headers=b)
        assert r.status_code == 201
        # Naming another tenant is refused, on every write path.
        assert (await client.post(docs, json={"tenant": "a"}, headers=b)).status_code == 403
        assert (await client.post(docs, json={"tenant": None}, headers=b)).status_code == 403
        assert (await client.put(f"{docs}/b2", json={"tenant": "a"}, headers=b)).status_code \
            == 403
        assert (await client.patch(f"{docs}/b1", json={"tenant": "a"}, headers=b)).status_code \
            == 403
        assert (await client.patch(f"{docs}/b1", json={"tenant": None}, headers=b)
                ).status_code == 403
        bulk = await client.post(f"{docs}:bulk", json=[{"_id": "b3"}, {"_id": "b4", "tenant": "a"},
                                                       {"_id": "b5"}], headers=b)
        assert bulk.status_code == 207
        assert [i["status"] for i in bulk.json()["items"]] == [201, 403, 424]
        # B never sees, changes or deletes A's document.
        assert (await client.get(f"{docs}/a1", headers=b)).status_code == 404
        assert (await client.patch(f"{docs}/a1", json={"v": 2}, headers=b)).status_code == 404
        assert (await client.delete(f"{docs}/a1", headers=b)).status_code == 404
        assert (await client.put(f"{docs}/a1", json={"v": 3}, headers=b)).status_code == 409
        assert (await client.put(f"{docs}/a1", json={"v": 3},
                                 headers={**b, "If-Match": "*"})).status_code == 412
        assert (await client.put(f"{docs}/a1", json={"v": 3},
                                 headers={**b, "If-Match": '"1"'})).status_code == 412
        assert (await client.delete(f"{docs}/a1", headers={**b, "If-Match": '"1"'})
                ).status_code == 412
        assert (await client.post(docs, json={"_id": "a1"}, headers=b)).status_code == 409
        listed = await client.get(docs, headers=b)
        assert {d["_id"] for d in listed.json()["documents"]} == {"b1", "b3"}
        escape = '{"$or":[{"tenant":"a"},{"tenant":{"$ne":"zzz"}}]}'
        listed = await client.get(docs, params={"filter": escape}, headers=b)
        assert {d["_id"] for d in listed.json()["documents"]} == {"b1", "b3"}
        a_doc = await client.get(f"{docs}/a1", headers=a)
        assert a_doc.json() == {"_id": "a1", "_version": 1, "v": 1, "tenant": "a"}
        # A's own writes work; a PUT keeps the tenant even if the body omits it.
        r = await client.put(f"{docs}/a1", json={"v": 9}, headers=a)
        assert r.status_code == 200
        assert r.json()["tenant"] == "a"
        assert (await client.delete(f"{docs}/b1", headers=a)).status_code == 404
        # Without a tenant (root) everything is visible.
        listed = await client.get(docs, headers=root)
        assert {d["_id"] for d in listed.json()["documents"]} == {"a1", "b1", "b3"}


# -------------------------------------------------------------------- HTTP headers


async def test_security_headers_and_csp(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == DASHBOARD_CSP
    assert "'unsafe-inline'" not in DASHBOARD_CSP
    assert "script-src 'self'" in DASHBOARD_CSP
    for path in ("/static/app.js", "/static/style.css"):
        assert (await client.get(path)).headers["content-security-policy"] == DASHBOARD_CSP
    api = await client.get("/api/collections")
    assert api.headers["content-security-policy"] == API_CSP
    for r in (page, api, await client.get("/healthz")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in (await client.get("/docs")).headers["content-security-policy"]
    assert "content-security-policy" not in (await client.get("/healthz")).headers
    assert "access-control-allow-origin" not in api.headers


async def test_dns_rebinding_guard(client: httpx.AsyncClient) -> None:
    # A browser (Origin / Sec-Fetch-Site) naming a non-loopback host: refused in mode none.
    evil = {"Host": "evil.example:8000", "Sec-Fetch-Site": "same-origin"}
    r = await client.get("/api/collections", headers=evil)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/", headers={"Host": "evil.example",
                                           "Origin": "http://evil.example"})).status_code == 403
    ok = {"Host": "127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    assert (await client.get("/api/collections", headers=ok)).status_code == 200
    assert (await client.get("/api/collections", headers={"Host": "localhost:8000",
                                                          "Sec-Fetch-Site": "none"})
            ).status_code == 200
    # Non-browser clients (no Origin, no Sec-Fetch-*) are not affected.
    assert (await client.get("/api/collections", headers={"Host": "anything"})).status_code == 200


async def test_cors_for_allowed_origins(settings: Settings) -> None:
    keyed = apikey_settings(settings, {"k": {"scopes": ["admin"]}},
                            allowed_origins=["https://app.example.com"])
    async with asgi_client(keyed) as client:
        pre = await client.options(DOCS.format("orders"), headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = await client.get("/api/collections", headers={
            "Origin": "https://app.example.com", **bearer("k")})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "etag" in r.headers["access-control-expose-headers"].lower()
        other = await client.options(DOCS.format("orders"), headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers


async def test_openapi_declares_security(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in item.items():
            for code in ("401", "403", "429"):
                assert code in op["responses"], (method, path, code)
                assert "application/problem+json" in op["responses"][code]["content"]
