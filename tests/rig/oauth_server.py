"""A real OAuth 2.0 authorization server on loopback, for the tests.

Authlib's server side does every grant (``authlib.integrations.flask_oauth2``):
refresh token (rotating like Microsoft's when asked), device code (RFC 8628),
authorization code with PKCE S256 (RFC 7636), client credentials and JWT bearer
(RFC 7523, Google-style service accounts). Storage is in memory. The server runs
in its own process (``python -m tests.rig.oauth_server --port P``, Werkzeug,
threaded, 127.0.0.1 only), so the daemon under test talks to a separate server
over real HTTP; tests drive it through ``OAuthServer``:

    srv = OAuthServer(access_ttl=4.0, rotate_refresh_tokens=True).start()
    srv.add_client("warmupd", client_secret="s3cret", app_mailboxes=("a@x.test",))
    rt = srv.issue_refresh_token("warmupd", "alice@warmup.test")   # a past consent
    srv.revoke_user("warmupd", "alice@warmup.test")                # consent withdrawn
    srv.fail_token_requests(2, mode="500")                         # next 2: HTTP 503
    srv.stats(); srv.reset(); srv.stop()

Endpoints: ``/token``, ``/authorize`` (auto-approves as ``login_hint``: the test
stands in for the user), ``/device_authorization``, ``/device`` (the verification
page: POST ``user_code`` and ``user``), ``/introspect`` (RFC 7662, no client
authentication: Dovecot posts ``token=...&client_id=&client_secret=``). Only the
introspection view and the ``/_rig/...`` control endpoints (JSON, how the Python
API talks to the process) are written by hand on top of the token storage.

Semantics worth knowing:

* access tokens die ``access_ttl`` seconds (a float) after they are issued; the
  token response's ``expires_in`` is that rounded up to a whole second (>= 1);
* with ``rotate_refresh_tokens`` every refresh returns a new refresh token and the
  old one answers ``invalid_grant`` (so do unknown and revoked ones); without it
  the refresh response carries no refresh token and the old one stays good;
* ``revoke_user`` kills that user's refresh and access tokens for the client;
* the device flow polls at 1 s (``slow_down`` if a client polls much faster), its
  codes live 300 s; a device code gives tokens once;
* introspection answers ``{"active": true, "username", "client_id", "scope",
  "exp"}`` for a live user token, ``{"active": true, "client_id",
  "app_mailboxes", "scope", "exp"}`` for an app (client credentials) token and
  ``{"active": false}`` for anything else (refresh tokens included);
* ``fail_token_requests(n, "500")``: the next n token requests answer 503
  ``temporarily_unavailable``; ``"hang"``: they say nothing for 60 s (or until
  ``reset()``), then answer 503. Other endpoints are not affected.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx2

__all__ = [
    "DEFAULT_GRANTS",
    "DEVICE_CODE",
    "JWT_BEARER",
    "OAuthServer",
    "create_app",
    "service_account_key",
]

DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_GRANTS = (
    "refresh_token",
    DEVICE_CODE,
    "authorization_code",
    "client_credentials",
    JWT_BEARER,
)
KNOWN_GRANTS = frozenset(DEFAULT_GRANTS)
DEVICE_INTERVAL = 1
DEVICE_EXPIRES_IN = 300
CODE_LIFETIME = 600.0
HANG_SECONDS = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


# --------------------------------------------------------------------------- storage


@dataclass
class Client:
    """A registered client (Authlib's ClientMixin methods are added in ``_authlib_models``)."""

    client_id: str
    client_secret: str | None
    grants: tuple[str, ...]
    app_mailboxes: tuple[str, ...]
    jwt_issuer: str | None
    jwt_public_key_pem: str | None
    redirect_uris: tuple[str, ...]


@dataclass
class AccessToken:
    token: str
    client_id: str
    user: str | None  # None: an app token (client credentials)
    scope: str
    grant_type: str
    expires_at: float
    revoked: bool = False

    def live(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass
class RefreshToken:
    token: str
    client_id: str
    user: str
    scope: str
    revoked: bool = False  # revoked by the user, or rotated away

    # Authlib's TokenMixin, as far as RefreshTokenGrant uses it
    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_user(self) -> str:
        return self.user

    def is_revoked(self) -> bool:
        return self.revoked

    def is_expired(self) -> bool:
        return False

    def get_expires_in(self) -> int:
        return 0


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float

    # Authlib's AuthorizationCodeMixin
    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Store:
    """Everything the server knows; one lock, taken by every request that reads or writes."""

    access_ttl: float
    rotate: bool
    lock: threading.RLock = field(default_factory=threading.RLock)
    clients: dict[str, Client] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    refresh: dict[str, RefreshToken] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)  # device_code -> DeviceCredentialDict
    device_grants: dict[str, tuple[str, bool]] = field(
        default_factory=dict
    )  # user_code -> (user, ok)
    device_polls: dict[str, float] = field(default_factory=dict)  # device_code -> last poll
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    rotations: int = 0
    fault_mode: str | None = None
    fault_left: int = 0
    release: threading.Event = field(default_factory=threading.Event)  # ends hanging requests

    def reset(self, access_ttl: float, rotate: bool) -> None:
        with self.lock:
            self.access_ttl, self.rotate = access_ttl, rotate
            for table in (self.clients, self.access, self.refresh, self.codes, self.devices,
                          self.device_grants, self.device_polls):  # fmt: skip
                table.clear()
            self.token_requests = []
            self.rotations = 0
            self.fault_mode, self.fault_left = None, 0
            self.release.set()  # requests hanging now answer at once
            self.release = threading.Event()

    def take_fault(self) -> tuple[str, threading.Event] | None:
        with self.lock:
            if self.fault_left <= 0 or self.fault_mode is None:
                return None
            self.fault_left -= 1
            return self.fault_mode, self.release

    def client_by_issuer(self, issuer: str) -> Client | None:
        with self.lock:
            for client in self.clients.values():
                if client.jwt_issuer is not None and client.jwt_issuer == issuer:
                    return client
        return None

    def revoke_user(self, client_id: str, user: str) -> int:
        who = user.lower()
        n = 0
        with self.lock:
            for tok in [*self.refresh.values(), *self.access.values()]:
                if (
                    tok.client_id == client_id
                    and (tok.user or "").lower() == who
                    and not tok.revoked
                ):
                    tok.revoked = True
                    n += 1
        return n


def redirect_uri_matches(registered: str, candidate: str) -> bool:
    """Exact match, or RFC 8252 section 7.3: a loopback redirect URI with any port
    (and, when the registered one has no path, any path)."""
    if candidate == registered:
        return True
    try:
        reg, cand = urlsplit(registered), urlsplit(candidate)
        cand.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if reg.scheme != "http" or cand.scheme != "http" or reg.hostname not in LOOPBACK_HOSTS:
        return False
    if cand.hostname != reg.hostname:
        return False
    return reg.path in ("", "/") or cand.path == reg.path


# --------------------------------------------------------------------------- Authlib glue


def _authlib_models() -> type:
    """``Client`` with Authlib's ClientMixin (imported lazily: the test process needs
    only the small API at the bottom of this module)."""
    from authlib.oauth2.rfc6749 import ClientMixin

    class AuthlibClient(Client, ClientMixin):  # type: ignore[misc]
        def get_client_id(self) -> str:
            return self.client_id

        def get_default_redirect_uri(self) -> str | None:
            return self.redirect_uris[0] if self.redirect_uris else None

        def get_allowed_scope(self, scope: str | None) -> str:
            return scope or ""

        def check_redirect_uri(self, redirect_uri: str) -> bool:
            return any(redirect_uri_matches(r, redirect_uri) for r in self.redirect_uris)

        def check_client_secret(self, client_secret: str) -> bool:
            if self.client_secret is None:
                return False
            return hmac.compare_digest(self.client_secret.encode(), str(client_secret).encode())

        def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
            if self.client_secret is None:  # a public client
                return method == "none"
            return method in ("client_secret_basic", "client_secret_post")

        def check_response_type(self, response_type: str) -> bool:
            return response_type == "code" and "authorization_code" in self.grants

        def check_grant_type(self, grant_type: str) -> bool:
            return grant_type in self.grants

    return AuthlibClient


def _build_server(app: Any, store: Store) -> Any:
    """Authlib's AuthorizationServer with every grant the rig offers, over ``store``."""
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from authlib.oauth2.rfc6749 import grants
    from authlib.oauth2.rfc6750 import BearerTokenGenerator
    from authlib.oauth2.rfc7523 import JWTBearerGrant
    from authlib.oauth2.rfc7636 import CodeChallenge
    from authlib.oauth2.rfc8628 import (
        DeviceAuthorizationEndpoint,
        DeviceCodeGrant,
        DeviceCredentialDict,
    )
    from flask import request as flask_request
    from joserfc.jwk import RSAKey

    secret_methods = ["client_secret_basic", "client_secret_post"]
    all_methods = [*secret_methods, "none"]

    def query_client(client_id: str) -> Client | None:
        with store.lock:
            return store.clients.get(client_id)

    def save_token(token: dict[str, Any], request: Any) -> None:
        client, user = request.client, request.user
        with store.lock:
            store.access[token["access_token"]] = AccessToken(
                token=token["access_token"],
                client_id=client.client_id,
                user=user,
                scope=token.get("scope", ""),
                grant_type=request.payload.grant_type,
                expires_at=time.time() + store.access_ttl,
            )
            if "refresh_token" in token and user is not None:
                store.refresh[token["refresh_token"]] = RefreshToken(
                    token["refresh_token"], client.client_id, user, token.get("scope", "")
                )

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=lambda **_: secrets.token_urlsafe(32),
            refresh_token_generator=lambda **_: secrets.token_urlsafe(40),
            expires_generator=lambda client, grant_type: max(1, math.ceil(store.access_ttl)),
        ),
    )

    class RefreshTokenGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = all_methods

        @property
        def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # type: ignore[override]  # noqa: N802
            return store.rotate

        def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
            with store.lock:
                tok = store.refresh.get(refresh_token)
                return tok if tok is not None and not tok.revoked else None

        def authenticate_user(self, refresh_token: RefreshToken) -> str:
            return refresh_token.user

        def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
            if store.rotate:
                with store.lock:
                    refresh_token.revoked = True
                    store.rotations += 1

    class ClientCredentialsGrant(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = secret_methods

    class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = all_methods

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            with store.lock:
                store.codes[code] = AuthCode(
                    code=code,
                    client_id=request.client.client_id,
                    redirect_uri=request.payload.redirect_uri,
                    scope=request.scope or "",
                    user=request.user,
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    expires_at=time.time() + CODE_LIFETIME,
                )

        def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
            with store.lock:
                rec = store.codes.get(code)
            if rec is None or rec.client_id != client.client_id or rec.expires_at < time.time():
                return None
            return rec

        def delete_authorization_code(self, authorization_code: AuthCode) -> None:
            with store.lock:
                store.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: AuthCode) -> str:
            return authorization_code.user

    class S256Only(CodeChallenge):
        SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    class DeviceEndpoint(DeviceAuthorizationEndpoint):
        INTERVAL = DEVICE_INTERVAL
        EXPIRES_IN = DEVICE_EXPIRES_IN

        def get_verification_uri(self) -> str:
            return flask_request.host_url.rstrip("/") + "/device"

        def save_device_credential(
            self, client_id: str, scope: str | None, data: dict[str, Any]
        ) -> None:
            cred = DeviceCredentialDict(
                client_id=client_id,
                scope=scope or "",
                expires_at=time.time() + self.EXPIRES_IN,
                **data,
            )
            with store.lock:
                store.devices[data["device_code"]] = cred

    class DeviceGrant(DeviceCodeGrant):
        def query_device_credential(self, device_code: str) -> Any:
            with store.lock:
                return store.devices.get(device_code)

        def query_user_grant(self, user_code: str) -> tuple[str, bool] | None:
            with store.lock:
                return store.device_grants.get(user_code)

        def should_slow_down(self, credential: Any) -> bool:
            # RFC 8628 3.5: a client polling faster than the interval is told to slow
            # down. Three quarters of it leaves room for network jitter.
            now = time.time()
            with store.lock:
                last = store.device_polls.get(credential["device_code"])
                store.device_polls[credential["device_code"]] = now
            return last is not None and now - last < 0.75 * DEVICE_INTERVAL

        def create_token_response(self) -> Any:
            result = super().create_token_response()
            with store.lock:  # a device code gives tokens once
                store.devices.pop(self.request.credential["device_code"], None)
            return result

    class ServiceAccountGrant(JWTBearerGrant):
        # Google's service accounts act as the mailbox named in "sub".
        CLAIMS_OPTIONS = {**JWTBearerGrant.CLAIMS_OPTIONS, "sub": {"essential": True}}
        rig_claims: dict[str, Any] | None = None

        def process_assertion_claims(self, assertion: str) -> Any:
            claims = super().process_assertion_claims(assertion)
            self.rig_claims = dict(claims)
            return claims

        def generate_token(self, user: Any = None, scope: str | None = None, **kw: Any) -> Any:
            # Google's clients put the scope in the assertion, not in the form.
            if not scope and self.rig_claims:
                scope = self.rig_claims.get("scope")
            return super().generate_token(user=user, scope=scope, **kw)

        def resolve_issuer_client(self, issuer: str) -> Client | None:
            return store.client_by_issuer(issuer)

        def resolve_client_public_key(self, client: Client) -> Any:
            return RSAKey.import_key(client.jwt_public_key_pem or "")

        def authenticate_user(self, subject: str) -> str:
            return subject

        def has_granted_permission(self, client: Client, user: str) -> bool:
            return user.lower() in {m.lower() for m in client.app_mailboxes}

        def get_audiences(self) -> list[str]:
            return [flask_request.host_url.rstrip("/") + "/token"]

    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(AuthorizationCodeGrant, [S256Only(required=True)])
    server.register_grant(DeviceGrant)
    server.register_grant(ServiceAccountGrant)
    server.register_endpoint(DeviceEndpoint)
    return server


# --------------------------------------------------------------------------- the app


def _request_identity(store: Store, form: Any, headers: Any) -> tuple[str | None, str | None]:
    """(client_id, user) of a token request, read before Authlib handles it (for stats)."""
    client_id = form.get("client_id")
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            client_id = base64.b64decode(auth[6:]).decode().partition(":")[0] or client_id
        except ValueError:
            pass
    grant, user = form.get("grant_type"), None
    with store.lock:
        if grant == "refresh_token":
            tok = store.refresh.get(form.get("refresh_token", ""))
            user = tok.user if tok else None
        elif grant == "authorization_code":
            code = store.codes.get(form.get("code", ""))
            user = code.user if code else None
        elif grant == DEVICE_CODE:
            cred = store.devices.get(form.get("device_code", ""))
            approved = store.device_grants.get(cred["user_code"]) if cred else None
            user = approved[0] if approved else None
    if grant == JWT_BEARER:
        claims = _unverified_claims(form.get("assertion", ""))
        issuer = claims.get("iss")
        client = store.client_by_issuer(issuer) if isinstance(issuer, str) else None
        client_id = client.client_id if client else client_id
        user = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    return client_id, user


def _unverified_claims(assertion: str) -> dict[str, Any]:
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def create_app(store: Store) -> Any:
    """The Flask app: Authlib's endpoints, the introspection view, the control endpoints."""
    from authlib.oauth2 import OAuth2Error
    from flask import Flask, Response, jsonify, request

    app = Flask("tests.rig.oauth_server")
    client_cls = _authlib_models()
    server = _build_server(app, store)

    def oauth_json(payload: dict[str, Any], status: int = 200) -> Response:
        resp = jsonify(payload)
        resp.status_code = status
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.post("/token")
    def token() -> Any:
        at = time.time()
        client_id, user = _request_identity(store, request.form, request.headers)
        fault = store.take_fault()
        if fault is not None:
            mode, release = fault
            if mode == "hang":
                release.wait(HANG_SECONDS)
            resp = oauth_json({"error": "temporarily_unavailable",
                               "error_description": "rig fault"}, 503)  # fmt: skip
        else:
            with store.lock:  # one grant at a time: rotation and revocation stay consistent
                resp = server.create_token_response()
        with store.lock:
            store.token_requests.append(
                {"grant_type": request.form.get("grant_type"), "client_id": client_id,
                 "user": user, "at": at, "status": resp.status_code}
            )  # fmt: skip
        return resp

    @app.get("/authorize")
    def authorize() -> Any:
        # The test stands in for the user: whoever login_hint names approves at once.
        user = request.args.get("login_hint")
        if not user:
            return Response("the rig approves as login_hint=USER: add it to the URL\n", 400)
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        with store.lock:
            return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/device_authorization")
    def device_authorization() -> Any:
        with store.lock:
            return server.create_endpoint_response("device_authorization")

    @app.route("/device", methods=["GET", "POST"])
    def device() -> Any:
        if request.method == "GET":
            return Response(
                '<form method="post">Code <input name="user_code"> as '
                '<input name="user"> <button>Allow</button></form>\n', 200,
                mimetype="text/html",
            )  # fmt: skip
        user_code = (request.form.get("user_code") or "").strip().upper()
        user = (request.form.get("user") or "").strip()
        approve = request.form.get("approve", "yes") != "no"
        if not user:
            return Response("who approves? post user=...\n", 400)
        with store.lock:
            known = any(c["user_code"] == user_code for c in store.devices.values())
            if not known:
                return Response(f"unknown or used code {user_code!r}\n", 400)
            store.device_grants[user_code] = (user, approve)
        return Response("approved\n" if approve else "denied\n", 200)

    @app.post("/introspect")
    def introspect() -> Any:
        tok_value = request.form.get("token", "")
        now = time.time()
        with store.lock:
            tok = store.access.get(tok_value)
            if tok is None or not tok.live(now):
                return oauth_json({"active": False})
            answer: dict[str, Any] = {
                "active": True, "client_id": tok.client_id, "scope": tok.scope,
                "exp": int(tok.expires_at), "token_type": "Bearer",
            }  # fmt: skip
            if tok.user is not None:
                answer.update(username=tok.user, sub=tok.user)
            else:
                client = store.clients.get(tok.client_id)
                answer["app_mailboxes"] = list(client.app_mailboxes) if client else []
        return oauth_json(answer)

    # -- control (/_rig/...): how OAuthServer talks to this process ------------------

    @app.get("/_rig/ping")
    def ping() -> Any:
        return jsonify({"ok": True, "pid": os.getpid()})

    @app.post("/_rig/clients")
    def add_client() -> Any:
        body = request.get_json(force=True)
        client = client_cls(
            client_id=body["client_id"],
            client_secret=body.get("client_secret"),
            grants=tuple(body["grants"]),
            app_mailboxes=tuple(body.get("app_mailboxes") or ()),
            jwt_issuer=body.get("jwt_issuer"),
            jwt_public_key_pem=body.get("jwt_public_key_pem"),
            redirect_uris=tuple(body.get("redirect_uris") or ()),
        )
        with store.lock:
            store.clients[client.client_id] = client
        return jsonify({"ok": True})

    @app.post("/_rig/refresh_tokens")
    def issue_refresh_token() -> Any:
        body = request.get_json(force=True)
        with store.lock:
            if body["client_id"] not in store.clients:
                return jsonify({"error": f"no client {body['client_id']!r}: add_client first"}), 400
            value = secrets.token_urlsafe(40)
            store.refresh[value] = RefreshToken(
                value, body["client_id"], body["user"], body.get("scope", "")
            )
        return jsonify({"refresh_token": value})

    @app.post("/_rig/revoke")
    def revoke() -> Any:
        body = request.get_json(force=True)
        return jsonify({"revoked": store.revoke_user(body["client_id"], body["user"])})

    @app.post("/_rig/faults")
    def faults() -> Any:
        body = request.get_json(force=True)
        with store.lock:
            store.fault_mode, store.fault_left = body["mode"], int(body["n"])
        return jsonify({"ok": True})

    @app.post("/_rig/config")
    def config() -> Any:
        body = request.get_json(force=True)
        with store.lock:
            if body.get("access_ttl") is not None:
                store.access_ttl = float(body["access_ttl"])
            if body.get("rotate_refresh_tokens") is not None:
                store.rotate = bool(body["rotate_refresh_tokens"])
        return jsonify({"ok": True})

    @app.get("/_rig/stats")
    def stats() -> Any:
        now = time.time()
        with store.lock:
            return jsonify(
                {
                    "token_requests": list(store.token_requests),
                    "rotations": store.rotations,
                    "active_access_tokens": sum(t.live(now) for t in store.access.values()),
                }
            )

    @app.get("/_rig/issued")
    def issued() -> Any:
        with store.lock:
            return jsonify(sorted({*store.access, *store.refresh}))

    @app.post("/_rig/reset")
    def reset() -> Any:
        body = request.get_json(force=True)
        store.reset(float(body["access_ttl"]), bool(body["rotate_refresh_tokens"]))
        return jsonify({"ok": True})

    return app


def main(argv: list[str] | None = None) -> int:
    from werkzeug.serving import make_server

    p = argparse.ArgumentParser(
        prog="python -m tests.rig.oauth_server", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--port", type=int, default=0, help="0 picks a free port (printed in the READY line)"
    )
    p.add_argument(
        "--access-ttl", type=float, default=3600.0, help="access token lifetime, seconds"
    )
    p.add_argument(
        "--rotate-refresh-tokens", action="store_true", help="a new refresh token on every use"
    )
    args = p.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    store = Store(access_ttl=args.access_ttl, rotate=args.rotate_refresh_tokens)
    httpd = make_server("127.0.0.1", args.port, create_app(store), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY port={httpd.server_port}", flush=True)  # the one line OAuthServer waits for
    try:
        httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


# --------------------------------------------------------------------------- the tests' API


class OAuthServer:
    """Runs ``python -m tests.rig.oauth_server`` and drives it over ``/_rig/...``.

    A context manager too: ``with OAuthServer(access_ttl=4.0) as srv: ...``.
    ``reset()`` forgets clients, tokens, stats and faults and restores the
    ``access_ttl`` / ``rotate_refresh_tokens`` given here (``configure()`` changes
    them until then). After ``stop()``, ``start()`` comes back on the same port (a
    mail server configured with the introspection URL keeps working).
    """

    def __init__(
        self,
        access_ttl: float = 3600.0,
        rotate_refresh_tokens: bool = True,
        *,
        port: int = 0,
        python: str = sys.executable,
    ) -> None:
        if access_ttl <= 0:
            raise ValueError("access_ttl must be > 0 seconds")
        self.access_ttl = float(access_ttl)
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.port = port
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: httpx2.Client | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> OAuthServer:
        cmd = [self.python, "-m", "tests.rig.oauth_server", "--port", str(self.port),
               "--access-ttl", repr(self.access_ttl)]  # fmt: skip
        if self.rotate_refresh_tokens:
            cmd.append("--rotate-refresh-tokens")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = _readline_with_timeout(self.proc.stdout, timeout)
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"oauth_server subprocess did not start (got {line!r})")
        self.port = int(line.decode().split("port=")[1])
        self._http = httpx2.Client(base_url=self.url, timeout=10.0)
        self._call("GET", "/_rig/ping")  # it answers: ready
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        """Start the server again (on the same port) if a test stopped it."""
        if not self.running():
            self.stop()
            self.start()

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    @property
    def device_authorization_url(self) -> str:
        return f"{self.url}/device_authorization"

    @property
    def authorization_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def verification_url(self) -> str:
        return f"{self.url}/device"

    # -- control --------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            raise RuntimeError("OAuthServer not started: call start() first")
        resp = self._http.request(method, path, json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"oauth rig {path}: HTTP {resp.status_code}: {resp.text.strip()}")
        return resp.json()

    def add_client(
        self,
        client_id: str,
        client_secret: str | None = "s3cret",
        grants: Iterable[str] = DEFAULT_GRANTS,
        app_mailboxes: Iterable[str] = (),
        jwt_issuer: str | None = None,
        jwt_public_key_pem: str | None = None,
        redirect_uris: Iterable[str] = ("http://127.0.0.1",),
    ) -> None:
        """Register (or replace) a client. ``client_secret=None``: a public client."""
        grants = tuple(grants)
        unknown = set(grants) - KNOWN_GRANTS
        if unknown:
            raise ValueError(
                f"unknown grant types {sorted(unknown)}; known: {sorted(KNOWN_GRANTS)}"
            )
        self._call("POST", "/_rig/clients", {
            "client_id": client_id, "client_secret": client_secret, "grants": list(grants),
            "app_mailboxes": list(app_mailboxes), "jwt_issuer": jwt_issuer,
            "jwt_public_key_pem": jwt_public_key_pem, "redirect_uris": list(redirect_uris),
        })  # fmt: skip

    def issue_refresh_token(self, client_id: str, user: str, scope: str = "mail") -> str:
        """A refresh token for ``user``, as a past consent would have left behind."""
        reply = self._call(
            "POST", "/_rig/refresh_tokens", {"client_id": client_id, "user": user, "scope": scope}
        )
        return str(reply["refresh_token"])

    def revoke_user(self, client_id: str, user: str) -> int:
        """The user withdraws consent: their refresh and access tokens die. Returns how many."""
        return int(
            self._call("POST", "/_rig/revoke", {"client_id": client_id, "user": user})["revoked"]
        )

    def approve_device(self, user_code: str, user: str, approve: bool = True) -> None:
        """What the user does on the verification page (``approve=False``: they deny)."""
        if self._http is None:
            raise RuntimeError("OAuthServer not started: call start() first")
        resp = self._http.post(
            "/device",
            data={"user_code": user_code, "user": user, "approve": "yes" if approve else "no"},
        )
        if resp.status_code != 200:
            raise RuntimeError(
                f"device approval refused: HTTP {resp.status_code}: {resp.text.strip()}"
            )

    def fail_token_requests(self, n: int, mode: str = "500") -> None:
        """The next ``n`` token requests answer 503 (``"500"``) or hang 60 s (``"hang"``)."""
        if mode not in ("500", "hang"):
            raise ValueError(f"mode must be '500' or 'hang', got {mode!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        self._call("POST", "/_rig/faults", {"n": n, "mode": mode})

    def configure(
        self, access_ttl: float | None = None, rotate_refresh_tokens: bool | None = None
    ) -> None:
        """Change the token lifetime / rotation for tokens issued from now on (until reset())."""
        if access_ttl is not None and access_ttl <= 0:
            raise ValueError("access_ttl must be > 0 seconds")
        self._call(
            "POST",
            "/_rig/config",
            {"access_ttl": access_ttl, "rotate_refresh_tokens": rotate_refresh_tokens},
        )

    def stats(self) -> dict[str, Any]:
        """``{"token_requests": [{grant_type, client_id, user, at, status}], "rotations",
        "active_access_tokens"}``"""
        reply: dict[str, Any] = self._call("GET", "/_rig/stats")
        return reply

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token the server has issued since the last reset (for
        tests that check no token ever shows in an output)."""
        reply: list[str] = self._call("GET", "/_rig/issued")
        return reply

    def reset(self) -> None:
        self._call("POST", "/_rig/reset", {
            "access_ttl": self.access_ttl, "rotate_refresh_tokens": self.rotate_refresh_tokens,
        })  # fmt: skip

    def introspect(self, token: str) -> dict[str, Any]:
        """What the mail servers learn about ``token`` (the RFC 7662 answer)."""
        if self._http is None:
            raise RuntimeError("OAuthServer not started: call start() first")
        resp = self._http.post(
            "/introspect", data={"token": token, "client_id": "", "client_secret": ""}
        )
        resp.raise_for_status()
        answer: dict[str, Any] = resp.json()
        return answer


def service_account_key(
    srv: OAuthServer,
    client_email: str = "sa@proj.iam.test",
    client_id: str = "sa-client",
    users: Iterable[str] = (),
) -> dict[str, str]:
    """A new RSA key registered as a JWT-bearer client acting for ``users``; returned in
    the format of Google's service-account JSON key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    srv.add_client(
        client_id,
        client_secret=None,
        grants=(JWT_BEARER,),
        app_mailboxes=tuple(users),
        jwt_issuer=client_email,
        jwt_public_key_pem=public_pem,
        redirect_uris=(),
    )
    return {
        "type": "service_account",
        "project_id": client_email.partition("@")[2].split(".")[0],
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": client_id,
        "token_uri": srv.token_url,
    }


def _readline_with_timeout(stream: IO[bytes], timeout: float) -> bytes:
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else b""


if __name__ == "__main__":
    sys.exit(main())
