"""Getting refresh tokens into the state database: `warmupd authorize` and `warmupd import-accounts`.

The consent flows of the ``refresh_token`` grant (Authlib's AsyncOAuth2Client does the
protocol; the state database keeps the token, owner-only, never the config file):

* **device code** (RFC 8628), for Microsoft and generic servers that offer it: the
  address and the code are printed, and the token endpoint is polled until the user
  has approved (or refused, or the code expired);
* **installed app** (authorization code with PKCE S256 and a loopback redirect, RFC
  8252), for Google, whose device flow does not allow the mail scope: the address is
  printed; the redirect is caught on 127.0.0.1, or, from a remote server whose browser
  cannot reach that address, the final address is pasted back at the prompt;
* ``--refresh-token-file``: a token obtained elsewhere.

``import-accounts`` onboards many mailboxes from a CSV file at once: it writes a file of
``[[accounts]]`` for ``accounts.d/`` and stores each row's refresh token.
"""

from __future__ import annotations

import asyncio
import csv
import http.server
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlparse

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from .config import Config, OAuthClient
from .oauth import client_of
from .store import Store

DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


class AuthorizeError(Exception):
    """The consent did not give a refresh token; the message says why and what to do."""


def _http(client: OAuthClient, **kw: Any) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=client.client_id,
        client_secret=client.client_secret.reveal() if client.client_secret else None,
        token_endpoint_auth_method="client_secret_post" if client.client_secret else "none",
        scope=" ".join(client.scopes) or None, timeout=client.timeout, **kw)


def _refused(e: OAuthError) -> str:
    text = e.error or "error"
    return f"{text} ({' '.join(str(e.description).split())})" if e.description else text


async def device_flow(client: OAuthClient, email: str, out: TextIO,
                      sleep: Callable[[float], Any] = asyncio.sleep) -> dict[str, Any]:
    """RFC 8628: print where to go and the code, poll until approved; the token answer."""
    assert client.device_authorization_url is not None
    data = {"client_id": client.client_id}
    if client.scopes:
        data["scope"] = " ".join(client.scopes)
    if client.client_secret is not None:
        data["client_secret"] = client.client_secret.reveal()
    async with httpx2.AsyncClient(timeout=client.timeout) as plain:
        try:
            r = await plain.post(client.device_authorization_url, data=data)
        except httpx2.HTTPError as e:
            raise AuthorizeError(f"cannot reach {client.device_authorization_url}: {e}") from None
    try:
        answer = r.json()
    except ValueError:
        answer = {}
    if r.status_code != 200 or "device_code" not in answer:
        why = answer.get("error", f"HTTP {r.status_code}") if isinstance(answer, dict) else r.status_code
        raise AuthorizeError(f"{client.device_authorization_url} refused the device code request: {why}")
    where = answer.get("verification_uri") or answer.get("verification_url")
    expires = float(answer.get("expires_in", 900))
    print(f"To authorize {email}: open {where} and enter the code {answer['user_code']} "
          f"(within {expires / 60:.0f} min), signed in as {email}.", file=out, flush=True)
    if answer.get("verification_uri_complete"):
        print(f"  or open {answer['verification_uri_complete']}", file=out, flush=True)
    print("Waiting for the approval...", file=out, flush=True)
    interval = float(answer.get("interval", 5))
    deadline = time.monotonic() + expires
    async with _http(client) as http:
        while time.monotonic() < deadline:
            await sleep(interval)
            try:
                return dict(await http.fetch_token(client.token_url, grant_type=DEVICE_CODE,
                                                   device_code=answer["device_code"]))
            except OAuthError as e:
                if e.error == "authorization_pending":
                    continue
                if e.error == "slow_down":
                    interval += 5
                    continue
                raise AuthorizeError(f"the authorization server said {_refused(e)}") from None
            except httpx2.HTTPError as e:
                print(f"  token endpoint: {e}; trying again", file=out, flush=True)
    raise AuthorizeError("the code expired before it was approved: run the command again")


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Catches the loopback redirect of the installed-app flow (one GET)."""

    got: Callable[[str], None]

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.got(f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}")
        body = b"warmupd: authorized. You may close this window.\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the address carries the code: never on the terminal


async def installed_app_flow(client: OAuthClient, email: str, out: TextIO,
                             stdin: TextIO | None = None) -> dict[str, Any]:
    """Authorization code + PKCE with a loopback redirect (RFC 8252); the token answer."""
    assert client.authorization_url is not None
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[str] = loop.create_future()

    def settle(url: str) -> None:
        if not arrived.done():
            arrived.set_result(url)

    def got(url: str) -> None:  # from the listener's or the prompt's thread
        loop.call_soon_threadsafe(settle, url)

    handler = type("Redirect", (_Redirect,), {"got": staticmethod(got)})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="authorize-redirect", daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/"
    verifier = secrets.token_urlsafe(64)
    extra: dict[str, str] = {"login_hint": email}
    if client.provider == "google":
        extra.update(access_type="offline", prompt="consent")  # or Google gives no refresh token
    try:
        async with _http(client, redirect_uri=redirect_uri, code_challenge_method="S256") as http_:
            url, state = http_.create_authorization_url(client.authorization_url,
                                                        code_verifier=verifier, **extra)
            print(f"To authorize {email}: open this address in a browser and sign in as {email}:\n"
                  f"  {url}\n"
                  "If that browser is not on this machine, the last page will not load: copy its "
                  "address from the address bar and paste it here.", file=out, flush=True)
            if stdin is not None:
                # A daemon thread: a prompt nobody answers must not hold the exit.
                def read() -> None:
                    line = stdin.readline().strip()
                    if line:
                        got(line)

                threading.Thread(target=read, name="authorize-paste", daemon=True).start()
            final = await arrived
            query = parse_qs(urlparse(final).query)
            if "error" in query:
                raise AuthorizeError(f"the authorization server said {query['error'][0]}")
            if query.get("state", [None])[0] != state:
                raise AuthorizeError("the address does not belong to this request (state differs): "
                                     "run the command again")
            try:
                return dict(await http_.fetch_token(client.token_url, authorization_response=final,
                                                    code_verifier=verifier, state=state))
            except OAuthError as e:
                raise AuthorizeError(f"the token endpoint said {_refused(e)}") from None
            except httpx2.HTTPError as e:
                raise AuthorizeError(f"cannot reach {client.token_url}: {e}") from None
    finally:
        server.shutdown()
        server.server_close()


async def store_token(config: Config, email: str, client: OAuthClient, token: str) -> None:
    store = await Store.open(config.daemon.database)
    try:
        await store.put_refresh_token(email, client.name, token)
    finally:
        await store.close()


async def authorize(config: Config, email: str, *, out: TextIO, stdin: TextIO | None,
                    token_file: Path | None = None, flow: str | None = None) -> str:
    """The whole of `warmupd authorize`; returns the line to print at the end."""
    account = config.account(email)
    if account is None:
        raise AuthorizeError(f"no account {email!r} in {config.path}")
    client = client_of(account, config)
    if client is None:
        raise AuthorizeError(f'{email} does not use OAuth: set auth = "oauth" and oauth = "NAME" '
                             "on its smtp/imap tables")
    if client.grant != "refresh_token":
        raise AuthorizeError(f"client {client.name!r} uses the {client.grant} grant: its mailboxes "
                             "need no consent each, nothing to authorize")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise AuthorizeError(f"cannot read {token_file}: {e.strerror}") from None
        if not token or "\n" in token:
            raise AuthorizeError(f"{token_file} must hold one refresh token on one line")
    else:
        if flow is None:
            flow = "device" if client.device_authorization_url else "browser"
        if flow == "device":
            if client.device_authorization_url is None:
                raise AuthorizeError(f"client {client.name!r} has no device_authorization_url: use --flow browser")
            answer = await device_flow(client, email, out)
        else:
            if client.authorization_url is None:
                raise AuthorizeError(f"client {client.name!r} has no authorization_url: use --flow device")
            answer = await installed_app_flow(client, email, out, stdin)
        got = answer.get("refresh_token")
        if not isinstance(got, str) or not got:
            raise AuthorizeError("the server gave no refresh token: ask for offline access "
                                 "(Microsoft: the offline_access scope; Google: a consent prompt)")
        token = got
    await store_token(config, email, client, token)
    return (f"stored a refresh token for {email} (client {client.name!r}) in {config.daemon.database}; "
            f"a running daemon uses it after `warmupctl resume {email}`")


# ---------------------------------------------------------------- import-accounts

PROVIDER_HOSTS = {
    "google": {"smtp": ("smtp.gmail.com", 587, "starttls"), "imap": ("imap.gmail.com", 993, "tls")},
    "microsoft": {"smtp": ("smtp.office365.com", 587, "starttls"),
                  "imap": ("outlook.office365.com", 993, "tls")},
}
CSV_COLUMNS = ("email", "provider", "client", "refresh_token", "smtp_host", "smtp_port",
               "smtp_security", "imap_host", "imap_port", "imap_security", "start_date", "timezone")


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a TOML basic string


def read_accounts_csv(config: Config, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of an import file, checked; (rows, problems with their line numbers)."""
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            unknown = [h for h in header if h not in CSV_COLUMNS]
            if unknown or not {"email", "client"} <= set(header):
                return [], [f"{path}: the header must name email,provider,client,refresh_token and "
                            f"optionally {','.join(CSV_COLUMNS[4:])}; got {','.join(header) or 'nothing'}"]
            seen: set[str] = set()
            for n, raw in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                where = f"{path.name} line {n}"
                email = row.get("email", "")
                if "@" not in email:
                    problems.append(f"{where}: email must be an address, got {email!r}")
                    continue
                if email.lower() in seen or config.account(email) is not None:
                    problems.append(f"{where}: {email} is already " +
                                    ("in this file" if email.lower() in seen else f"in {config.path}"))
                    continue
                seen.add(email.lower())
                client = config.oauth.get(row.get("client", ""))
                if client is None:
                    problems.append(f"{where}: client {row.get('client')!r} is no [oauth] client of "
                                    f"{config.path} (known: {', '.join(sorted(config.oauth)) or 'none'})")
                    continue
                provider = row.get("provider") or client.provider
                if provider != client.provider:
                    problems.append(f"{where}: provider {provider!r} but client {client.name!r} is {client.provider!r}")
                    continue
                if client.grant == "refresh_token" and not row.get("refresh_token"):
                    problems.append(f"{where}: refresh_token is empty (client {client.name!r} needs one per mailbox)")
                    continue
                servers: dict[str, tuple[str, int, str]] = {}
                for kind in ("smtp", "imap"):
                    default = PROVIDER_HOSTS.get(client.provider, {}).get(kind)
                    host = row.get(f"{kind}_host") or (default[0] if default else "")
                    if not host:
                        if kind == "smtp":
                            problems.append(f"{where}: smtp_host is required for a {client.provider} client")
                        continue
                    try:
                        port = int(row.get(f"{kind}_port") or (default[1] if default else (587 if kind == "smtp" else 993)))
                    except ValueError:
                        problems.append(f"{where}: {kind}_port must be a number, got {row.get(f'{kind}_port')!r}")
                        continue
                    security = row.get(f"{kind}_security") or (default[2] if default else
                                                               ("starttls" if kind == "smtp" else "tls"))
                    servers[kind] = (host, port, security)
                start = row.get("start_date") or date.today().isoformat()
                try:
                    date.fromisoformat(start)
                except ValueError:
                    problems.append(f"{where}: start_date must be YYYY-MM-DD, got {start!r}")
                    continue
                rows.append({"email": email, "client": client, "refresh_token": row.get("refresh_token"),
                             "servers": servers, "start_date": start, "timezone": row.get("timezone")})
    except OSError as e:
        return [], [f"{path}: cannot read: {e.strerror}"]
    except (UnicodeDecodeError, csv.Error) as e:
        return [], [f"{path}: not a UTF-8 CSV file: {e}"]
    if not rows and not problems:
        problems.append(f"{path}: no rows below the header")
    return rows, problems


def accounts_toml(rows: list[dict[str, Any]], source: Path) -> str:
    lines = [f"# Imported by `warmupd import-accounts {source.name}`; the refresh tokens are in the state database.", ""]
    for r in rows:
        lines.append("[[accounts]]")
        lines.append(f"email = {_toml_str(r['email'])}")
        lines.append(f"start_date = {r['start_date']}")
        if r["timezone"]:
            lines.append(f"timezone = {_toml_str(r['timezone'])}")
        for kind, (host, port, security) in r["servers"].items():
            lines.append(f"{kind} = {{ host = {_toml_str(host)}, port = {port}, security = {_toml_str(security)}, "
                         f'auth = "oauth", oauth = {_toml_str(r["client"].name)} }}')
        lines.append("")
    return "\n".join(lines)


async def import_accounts(config: Config, csv_path: Path, out_path: Path, *, force: bool) -> str:
    rows, problems = read_accounts_csv(config, csv_path)
    if problems:
        raise AuthorizeError(f"{len(problems)} problem(s), nothing imported:\n  " + "\n  ".join(problems))
    if out_path.exists() and not force:
        raise AuthorizeError(f"{out_path} exists: choose another --out or pass --force")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(accounts_toml(rows, csv_path), encoding="utf-8")
    store = await Store.open(config.daemon.database)
    try:
        for r in rows:
            if r["refresh_token"]:
                await store.put_refresh_token(r["email"], r["client"].name, r["refresh_token"])
    finally:
        await store.close()
    tmp.replace(out_path)  # the accounts appear only once their tokens are stored
    return (f"imported {len(rows)} account(s) into {out_path} and stored "
            f"{sum(1 for r in rows if r['refresh_token'])} refresh token(s); make sure "
            f"[daemon] include matches it, then `warmupd check` and reload (SIGHUP)")


def run(coro: Any) -> int:
    """Run a command coroutine; an AuthorizeError is one line (or a list) and exit 1."""
    try:
        line = asyncio.run(coro)
    except AuthorizeError as e:
        print(f"warmupd: {e}", file=sys.stderr)
        return 1
    print(line)
    return 0
