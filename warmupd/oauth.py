"""OAuth 2.0 access tokens for servers with ``auth = "oauth"`` (Google Workspace, Microsoft 365).

The protocol is Authlib's (its httpx clients); only the SASL strings are written here.

Grants, one ``[oauth.NAME]`` client each (config.py fills in the providers' endpoints):

* ``refresh_token``: a refresh token per mailbox, stored in the state database by
  ``warmupd authorize`` (authorize.py). A token the server rotates is committed,
  replacing the old one in one transaction, before the new access token is used: a
  crash at any moment leaves a refresh token the server still honours.
* ``service_account``: a JWT bearer assertion (RFC 7523) signed with the key, the
  mailbox as subject: every mailbox of a Google domain with domain-wide delegation.
* ``client_credentials``: one app token per client (a Microsoft tenant), used for
  each of its mailboxes.

Access tokens live in memory only. Each is refreshed in the background ahead of its
expiry (``lead``), so a send never waits for the token endpoint; however many sends
and IMAP sessions want a token at once, one request per token is in flight. A token
endpoint that times out or answers 5xx is retried with backoff while the current
token lasts; a send that finds no valid token is retried like a refused connection.
``invalid_grant`` (consent revoked, a deleted user) or a refused client pauses the
accounts that depend on it, with the command that fixes it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import faults
from .calendar import iso_utc
from .config import Account, Config, OAuthClient
from .logs import forget_secret, get_logger, register_secret
from .metrics import family
from .store import Store

if TYPE_CHECKING:  # Authlib, httpx and joserfc are imported on first use: a third of the
    # daemon's import time, and most pools have no OAuth account.
    from authlib.integrations.httpx_client import AsyncOAuth2Client

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LEAD_MAX = 300.0  # refresh at most this long before expiry (at most half a token's life)
MARGIN_MAX = 5.0  # a token closer than this to its expiry is not handed out
RETRY_BASE = 2.0  # backoff of a failing token endpoint, doubling
RETRY_MAX = 300.0
CONCURRENT_REQUESTS = 8  # token requests in flight at once (a start with many accounts)
# The token endpoint's answers that no retry will change.
REFUSALS = ("invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope",
            "access_denied", "consent_required", "interaction_required")


def xoauth2(user: str, token: str) -> str:
    """The XOAUTH2 initial response (Google's and Microsoft's SASL mechanism), base64."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")


def oauthbearer(user: str, token: str, host: str, port: int) -> str:
    """The OAUTHBEARER initial response (RFC 7628), base64."""
    gs2 = "n,a=" + user.replace("=", "=3D").replace(",", "=2C") + ","
    text = f"{gs2}\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode()).decode("ascii")


OAUTH_MISSING = "OAuth: no refresh token stored"  # the start of that pause's reason


def authorize_command(config: Config, email: str) -> str:
    return f"warmupd authorize --config {config.path} --account {email}"


def client_of(account: Account, config: Config) -> OAuthClient | None:
    """The OAuth client an account's SMTP (else IMAP) server uses, if any."""
    for srv in (account.smtp, account.imap):
        if srv is not None and srv.auth == "oauth" and srv.oauth is not None:
            return config.oauth.get(srv.oauth)
    return None


class TokenError(Exception):
    """No access token to be had now. ``refused``: the server said no for good."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(eq=False)
class _Token:
    """One access token's life: the client, whom it serves, the cached token."""

    client: OAuthClient
    subject: str  # the mailbox; "" for an app token (client credentials)
    accounts: set[str] = field(default_factory=set)
    refresh: str | None = None  # the stored refresh token (refresh_token grant)
    access: str | None = None
    expires_at: float = 0.0
    lifetime: float = 0.0
    inflight: asyncio.Task[str] | None = None
    timer: asyncio.TimerHandle | None = None
    error: str | None = None  # the last failure, None once a token came
    refused: bool = False
    failures: int = 0


def _key(client: OAuthClient, email: str) -> tuple[str, str]:
    return (client.name, "" if client.grant == "client_credentials" else email)


class Tokens:
    """Every OAuth account's access token; created by the daemon, used by SMTP and IMAP."""

    def __init__(self, store: Store, *, refused: Callable[[str, str], Awaitable[Any]],
                 now: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.store = store
        self._refused_cb = refused
        self.now = now
        self.rng = rng or random.Random()
        self.log = get_logger("warmupd.oauth")
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._by_account: dict[str, _Token] = {}
        self._http: dict[str, tuple[OAuthClient, AsyncOAuth2Client]] = {}  # by client name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(CONCURRENT_REQUESTS)
        self._config: Config | None = None
        self._closed = False
        self.results: dict[tuple[str, str], int] = {}  # (client, ok|failed|refused) -> requests

    # ------------------------------------------------------------ life cycle

    async def configure(self, config: Config) -> dict[str, str]:
        """Take ``config`` (at start and on each reload): one token per mailbox (one per
        client for client credentials); the accounts that cannot have one yet, with why.
        Tokens no longer wanted are dropped; new ones are fetched in the background."""
        self._config = config
        stored = await self.store.refresh_tokens()
        wanted: dict[tuple[str, str], _Token] = {}
        missing: dict[str, str] = {}
        by_account: dict[str, _Token] = {}
        for account in config.accounts:
            client = client_of(account, config)
            if client is None:
                continue
            key = _key(client, account.email)
            tok = wanted.get(key) or self._tokens.get(key)
            if tok is None or tok.client != client:
                if tok is not None:
                    self._drop(tok)
                tok = _Token(client=client, subject=key[1])
            tok.accounts = tok.accounts if key in wanted else set()
            tok.accounts.add(account.email)
            wanted[key] = tok
            by_account[account.email] = tok
            if client.grant == "refresh_token":
                rt = stored.get((account.email, client.name))
                if rt is None:
                    missing[account.email] = (
                        f"{OAUTH_MISSING} for client {client.name!r}: run "
                        f"`{authorize_command(config, account.email)}`, then `warmupctl resume {account.email}`")
                    tok.error = missing[account.email]
                elif rt != tok.refresh:
                    register_secret(rt)
                    tok.refresh, tok.refused, tok.error = rt, False, None
        for key, tok in self._tokens.items():
            if key not in wanted:
                self._drop(tok)
        self._tokens, self._by_account = wanted, by_account
        for name, (client, http) in list(self._http.items()):
            if config.oauth.get(name) != client:
                del self._http[name]
                await http.aclose()
        for tok in wanted.values():
            if tok.access is None and tok.inflight is None and not tok.refused \
                    and (tok.client.grant != "refresh_token" or tok.refresh is not None):
                self._start(tok)
        return missing

    async def close(self) -> None:
        self._closed = True
        for tok in self._tokens.values():
            if tok.timer is not None:
                tok.timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, http in self._http.values():
            await http.aclose()
        self._http.clear()

    def _drop(self, tok: _Token) -> None:
        if tok.timer is not None:
            tok.timer.cancel()
        if tok.inflight is not None:
            tok.inflight.cancel()
        if tok.access:
            forget_secret(tok.access)

    # ------------------------------------------------------------ asking for a token

    async def token(self, email: str, rejected: str | None = None) -> str:
        """A valid access token for ``email``. ``rejected``: the server refused this one
        (revoked early, say): get another, unless someone already has. Raises TokenError."""
        tok = self._by_account.get(email)
        if tok is None:
            raise TokenError(f"{email} has no OAuth client configured")
        if tok.refused or (tok.client.grant == "refresh_token" and tok.refresh is None):
            # `warmupd authorize` may have stored a new token since (then the operator resumes).
            rt = await self.store.refresh_token(email, tok.client.name) \
                if tok.client.grant == "refresh_token" else None
            if rt is None or rt == tok.refresh:
                raise TokenError(tok.error or "OAuth: no usable token", refused=True)
            register_secret(rt)
            tok.refresh, tok.refused, tok.error, tok.failures = rt, False, None, 0
        if rejected is None or tok.access != rejected:
            if tok.access and self.now() < tok.expires_at - self._margin(tok):
                return tok.access
        elif tok.access == rejected:
            self._expire(tok)
        task = tok.inflight or self._start(tok)
        return await asyncio.shield(task)

    def info(self, email: str) -> dict[str, Any] | None:
        """What ``warmupctl accounts`` shows of an account's token (never the token)."""
        tok = self._by_account.get(email)
        if tok is None:
            return None
        return {"oauth_client": tok.client.name, "grant": tok.client.grant,
                "token_expires_at": iso_utc(tok.expires_at) if tok.access else None,
                "last_token_error": tok.error}

    def metrics_lines(self) -> list[str]:
        """Prometheus text of the token requests (never a token); none without OAuth."""
        if not self._tokens:
            return []
        failing = sum(1 for t in self._tokens.values() if t.error is not None)
        return [*family("warmupd_oauth_token_requests_total", "counter",
                        "Token requests since start, by client and result.",
                        (({"client": c, "result": r}, n) for (c, r), n in sorted(self.results.items()))),
                *family("warmupd_oauth_tokens_failing", "gauge",
                        "Access tokens whose last request failed or is missing.", [({}, failing)])]

    def _count(self, tok: _Token, result: str) -> None:
        key = (tok.client.name, result)
        self.results[key] = self.results.get(key, 0) + 1

    @staticmethod
    def _margin(tok: _Token) -> float:
        return min(MARGIN_MAX, tok.lifetime / 4)

    def _expire(self, tok: _Token) -> None:
        if tok.access:
            forget_secret(tok.access)
        tok.access, tok.expires_at = None, 0.0

    # ------------------------------------------------------------ refreshing

    def _start(self, tok: _Token) -> asyncio.Task[str]:
        if tok.timer is not None:
            tok.timer.cancel()
            tok.timer = None
        task = asyncio.get_running_loop().create_task(self._refresh(tok))
        tok.inflight = task
        self._tasks.add(task)

        def done(t: asyncio.Task[str]) -> None:
            self._tasks.discard(t)
            if tok.inflight is t:
                tok.inflight = None
            if not t.cancelled():
                t.exception()  # retrieved: callers see it through their own await

        task.add_done_callback(done)
        return task

    def _schedule(self, tok: _Token, delay: float) -> None:
        if self._closed or tok.refused:
            return
        if tok.timer is not None:
            tok.timer.cancel()
        loop = asyncio.get_running_loop()
        tok.timer = loop.call_later(max(0.0, delay), self._timer_fired, tok)

    def _timer_fired(self, tok: _Token) -> None:
        tok.timer = None
        if tok.inflight is None and self._by_account.get(next(iter(tok.accounts), "")) is tok:
            self._start(tok)

    async def _refresh(self, tok: _Token) -> str:
        try:
            async with self._slots:
                try:
                    access, lifetime = await self._request(tok)
                except (TokenError, asyncio.CancelledError):
                    raise
                except Exception as e:  # a library's surprise: a failure like any other, retried
                    raise TokenError(f"OAuth token request for {tok.client.name!r} failed: "
                                     f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
        except TokenError as e:
            tok.error = str(e)
            self._count(tok, "refused" if e.refused else "failed")
            if e.refused:
                tok.refused = True
                self._expire(tok)
                self.log.error("oauth token refused; pausing", client=tok.client.name,
                               accounts=sorted(tok.accounts), error=str(e))
                for email in sorted(tok.accounts):
                    await self._refused_cb(email, str(e))
            else:
                tok.failures += 1
                delay = min(RETRY_MAX, RETRY_BASE * 2 ** min(tok.failures - 1, 16)) * (0.5 + self.rng.random())
                # Keep trying while the current token lasts, and after.
                self.log.warning("oauth token request failed; retrying", client=tok.client.name,
                                 accounts=sorted(tok.accounts)[:10], error=str(e), retry_in_s=round(delay, 1),
                                 token_valid_for_s=round(max(0.0, tok.expires_at - self.now()), 1))
                self._schedule(tok, delay)
            raise
        self._count(tok, "ok")
        old = tok.access
        register_secret(access)
        tok.access, tok.lifetime = access, lifetime
        tok.expires_at = self.now() + lifetime
        if old and old != access:
            forget_secret(old)
        if tok.error is not None or tok.failures:
            self.log.info("oauth token working again", client=tok.client.name, after_failures=tok.failures)
        tok.error, tok.failures = None, 0
        lead = min(LEAD_MAX, lifetime / 2)
        self._schedule(tok, lifetime - lead)
        return access

    def _http_client(self, client: OAuthClient) -> AsyncOAuth2Client:
        """Authlib's client for one [oauth] client, shared by its tokens: every answer is
        used from what the call returns, never from the client's own ``token``."""
        known = self._http.get(client.name)
        if known is not None and known[0] == client:
            return known[1]
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        http = AsyncOAuth2Client(
            client_id=client.client_id,
            client_secret=client.client_secret.reveal() if client.client_secret else None,
            token_endpoint_auth_method="client_secret_post" if client.client_secret else "none",
            timeout=client.timeout)
        self._http[client.name] = (client, http)
        return http

    async def _request(self, tok: _Token) -> tuple[str, float]:
        """One token request; returns (access token, lifetime in seconds)."""
        import httpx2
        from authlib.integrations.base_client import OAuthError

        client = tok.client
        http = self._http_client(client)
        scope = " ".join(client.scopes) or None
        try:
            if client.grant == "refresh_token":
                assert tok.refresh is not None
                old = tok.refresh
                extra = {"scope": scope} if scope and client.provider != "google" else {}
                answer = await http.refresh_token(client.token_url, refresh_token=old, **extra)
                new = answer.get("refresh_token")
                if isinstance(new, str) and new and new != old:
                    await self._rotate(tok, old, new)
            elif client.grant == "client_credentials":
                answer = await http.fetch_token(client.token_url, grant_type="client_credentials",
                                                **({"scope": scope} if scope else {}))
            else:
                answer = await http.fetch_token(client.token_url, grant_type=JWT_BEARER,
                                                assertion=self._assertion(client, tok.subject, scope))
        except OAuthError as e:
            what = e.error or "error"
            text = f"OAuth token endpoint of {client.name!r} refused: {what}"
            if e.description:
                text += f" ({' '.join(str(e.description).split())[:200]})"
            refused = what in REFUSALS
            if refused and what == "invalid_grant" and client.grant == "refresh_token" and self._config:
                text += "; run " + " or ".join(
                    f"`{authorize_command(self._config, a)}`" for a in sorted(tok.accounts)[:1])
            raise TokenError(text, refused=refused) from None
        except httpx2.HTTPStatusError as e:
            raise TokenError(f"OAuth token endpoint of {client.name!r} answered "
                             f"{e.response.status_code}") from None
        except (httpx2.HTTPError, ValueError, OSError) as e:
            what = " ".join(str(e).split()) or type(e).__name__
            raise TokenError(f"OAuth token endpoint of {client.name!r} unreachable: {what}") from None
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenError(f"OAuth token endpoint of {client.name!r} gave no access_token")
        try:
            lifetime = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return access, max(1.0, lifetime)

    async def _rotate(self, tok: _Token, old: str, new: str) -> None:
        """The server rotated the refresh token: the new one is durable before it is used."""
        register_secret(new)
        for email in sorted(tok.accounts):
            written = await self.store.put_refresh_token(email, tok.client.name, new, replaces=old)
            if not written:
                # `warmupd authorize` stored another one meanwhile: that is the newer consent.
                self.log.info("oauth refresh token replaced meanwhile; keeping the stored one",
                              account=email, client=tok.client.name)
        tok.refresh = new
        faults.point("oauth.after_rotation")
        forget_secret(old)
        self.log.info("oauth refresh token rotated", client=tok.client.name, accounts=sorted(tok.accounts))

    @staticmethod
    def _assertion(client: OAuthClient, subject: str, scope: str | None) -> str:
        """The RFC 7523 assertion: signed by the service account, for ``subject``."""
        from joserfc import jwt
        from joserfc.jwk import RSAKey

        assert client.key is not None
        now = int(time.time())
        header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
        if client.key.private_key_id:
            header["kid"] = client.key.private_key_id
        claims: dict[str, Any] = {"iss": client.key.client_email, "sub": subject,
                                  "aud": client.token_url, "iat": now, "exp": now + 3600}
        if scope:
            claims["scope"] = scope  # Google reads the scope from the assertion
        key = RSAKey.import_key(client.key.private_key.reveal())
        return jwt.encode(header, claims, key)

