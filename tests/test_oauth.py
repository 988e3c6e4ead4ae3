"""OAuth 2.0 mailboxes end to end: `warmupd run` as a subprocess on the real clock, a real
authorization server (tests/rig/oauth_server.py, Authlib's grants) issuing access tokens
that live a few seconds, Dovecot checking XOAUTH2 tokens at its introspection endpoint,
and the SMTP front taking AUTH XOAUTH2 only for tokens that endpoint calls active.

No account has a password anywhere: the config names [oauth] clients, refresh tokens are
stored by `warmupd authorize` / `import-accounts`, and the SMTP front records the SASL
mechanism of every message it took.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.daemon_helpers import (
    DaemonFactory,
    account_lines,
    db_path,
    seed_plan,
    send_rows,
    utc_today,
    wait_rows,
    wait_until,
)
from tests.rig.mailrig import MailRig
from tests.rig.oauth_server import OAuthServer, service_account_key

ALICE, BOB, CAROL = "alice@warmup.test", "bob@warmup.test", "carol@warmup.test"
USERS = (ALICE, BOB, CAROL)
CLIENT_SECRET = "cs-5f0c2e7a9b41d8e6a3c07f9d"
REFRESH = "refresh_token"
DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
CODE = "authorization_code"
JWT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CREDS = "client_credentials"


def _q(s: str) -> str:
    return json.dumps(s)


def write_config(tmp: Path, rig: MailRig, srv: OAuthServer, accounts: Mapping[str, str], *,
                 clients: Mapping[str, Sequence[str]], imap: bool = True,
                 grace: str = "5s", password_accounts: Sequence[str] = ()) -> Path:
    """A config whose accounts (email -> [oauth] client name) log in with OAuth, beside
    ``password_accounts`` that log in with the rig's password (SMTP only).
    ``clients``: name -> TOML lines of its [oauth.NAME] table."""
    sock = Path(os.path.realpath("/tmp")) / f"wo-{os.getpid()}-{tmp.name[-12:]}"
    sock.mkdir(exist_ok=True)
    (tmp / "client-secret").write_text(CLIENT_SECRET + "\n")
    lines = ["[daemon]", 'state_dir = "state"', f"socket = {_q(str(sock / 's'))}", f'grace = "{grace}"',
             'log_format = "json"', 'log_level = "debug"', 'shutdown_timeout = "5s"', "",
             "[defaults]", 'timezone = "UTC"',
             'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
             'jitter = "0s"', 'micro_jitter = "0s"', 'min_gap = "1s"', "",
             "[defaults.periods]", 'all = { windows = ["00:00-24:00"], weight = 1.0 }', "",
             "[defaults.engagement]", 'delay = "1s-2s"', "reply_rate = 0.0", "important_rate = 0.0", ""]
    for name, body in clients.items():
        lines += [f"[oauth.{name}]", *body, ""]
    start = (utc_today().replace(year=utc_today().year + 1)).isoformat()  # plans nothing itself
    for email, client in accounts.items():
        imap_line = (f'imap = {{ host = "127.0.0.1", port = {rig.imap_port}, security = "none", '
                     f'auth = "oauth", oauth = {_q(client)}, poll = "2s", timeout = "3s" }}')
        lines += account_lines(email, start, f'{{ host = "127.0.0.1", port = {rig.smtp_port}, security = "none", '
                                             f'auth = "oauth", oauth = {_q(client)}, timeout = "5s" }}',
                               *([imap_line] if imap else []))
    for email in password_accounts:
        lines += account_lines(email, start, f'{{ host = "127.0.0.1", port = {rig.smtp_port}, security = "none", '
                                             f'password = {_q(rig.users[email])}, timeout = "5s" }}')
    path = tmp / "config.toml"
    path.write_text("\n".join(lines))
    return path


def generic_client(srv: OAuthServer, client_id: str = "warmupd-test", *, secret: bool = True,
                   grant: str = REFRESH, extra: Sequence[str] = ()) -> list[str]:
    lines = ['provider = "generic"', f'grant = "{grant}"', f"client_id = {_q(client_id)}",
             f"token_url = {_q(srv.token_url)}",
             f"device_authorization_url = {_q(srv.device_authorization_url)}",
             f"authorization_url = {_q(srv.authorization_url)}", 'scopes = ["mail"]', *extra]
    if secret:
        lines.append('client_secret_file = "client-secret"')
    return lines


def warmupd(*args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmupd.cli", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)


def warmupctl(config: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "warmupd.ctl", "--config", str(config), *args, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def store_tokens(tmp: Path, config: Path, tokens: Mapping[str, str]) -> None:
    """Each refresh token stored the way an operator would: `warmupd authorize --refresh-token-file`."""
    for email, token in tokens.items():
        f = tmp / f"rt-{email}"
        f.write_text(token + "\n")
        done = warmupd("authorize", "--config", str(config), "--account", email,
                       "--refresh-token-file", str(f))
        assert done.returncode == 0, done.stderr
        assert "stored a refresh token" in done.stdout
        assert token not in done.stdout + done.stderr
        f.unlink()


def refresh_pool(tmp: Path, rig: MailRig, srv: OAuthServer, accounts: Sequence[str], *,
                 authorized: Sequence[str] = (), grants: Sequence[str] = (REFRESH,),
                 redirect_uris: Sequence[str] = (), **kw: Any) -> Path:
    """The usual set-up: one refresh-token client "rig" for ``accounts`` (SMTP only unless
    ``imap=True``), the ``authorized`` ones with a stored refresh token."""
    srv.add_client("warmupd-test", client_secret=CLIENT_SECRET, grants=tuple(grants),
                   redirect_uris=tuple(redirect_uris))
    kw.setdefault("imap", False)
    config = write_config(tmp, rig, srv, dict.fromkeys(accounts, "rig"),
                          clients={"rig": generic_client(srv)}, **kw)
    store_tokens(tmp, config, {u: srv.issue_refresh_token("warmupd-test", u) for u in authorized})
    return config


def assert_no_secret(texts: Sequence[str], secrets: Sequence[str]) -> None:
    for text in texts:
        for s in secrets:
            assert s not in text, f"a secret ({s[:4]}...) appears in the output"
    # Every bearer token the rig issued is a long random string; none may show.
    for text in texts:
        for m in re.finditer(r"Bearer\s+\S+", text):
            raise AssertionError(f"a bearer token in the output: {m.group(0)[:12]}...")


def lateness(records: list[dict[str, Any]], planned: Mapping[str, float]) -> list[float]:
    return [r["mail_from_at"] - planned[r["message_id"]] for r in records if r["message_id"] in planned]


# ------------------------------------------------------------------ the pool


def test_three_oauth_accounts_send_engage_and_refresh_on_time(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    srv.configure(access_ttl=3.0)
    srv.add_client("warmupd-test", client_secret=CLIENT_SECRET, grants=(REFRESH,))
    tokens = {u: srv.issue_refresh_token("warmupd-test", u) for u in USERS}
    config = write_config(tmp_path, rig, srv, {u: "rig" for u in USERS}, clients={"rig": generic_client(srv)})
    store_tokens(tmp_path, config, tokens)
    check = warmupd("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert "3 of 3 refresh-token account(s) authorized" in check.stdout
    assert (db_path(tmp_path).stat().st_mode & 0o077) == 0, "the database holds tokens: owner only"

    t0 = time.time() + 4
    seeded = seed_plan(tmp_path, {u: [t0 + i * 1.5 + k * 0.4 for i in range(6)] for k, u in enumerate(USERS)})
    planned = {s.message_id: s.at for s in seeded}
    d = daemons(config, tmp_path)
    rows = wait_rows(tmp_path, lambda rs: all(r["status"] == "sent" for r in rs), 60, "every send sent")
    assert len(rows) == 18
    records = rig.smtp.recorder.wait_for(18, timeout=10)
    assert {r["auth_mechanism"] for r in records} == {"XOAUTH2"}
    assert {r["auth_login"] for r in records} == set(USERS)
    late = lateness(records, planned)
    assert len(late) == 18 and min(late) >= 0, late
    assert max(late) < 0.25, f"a token refresh made a send late: {sorted(late)[-3:]}"

    # Tokens expired and were refreshed (and rotated) during the sends: one at a time each.
    stats = srv.stats()
    refreshes = [r for r in stats["token_requests"] if r["grant_type"] == REFRESH]
    assert all(r["status"] == 200 for r in refreshes), refreshes
    assert len(refreshes) >= 3 * 4, "access tokens of 3 s over ~10 s of sends: several refreshes each"
    assert stats["rotations"] == len(refreshes)
    per_user: dict[str, list[float]] = {}
    for r in refreshes:
        per_user.setdefault(r["user"], []).append(r["at"])
    for user, times in per_user.items():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) > 0.5, f"{user}: two refreshes at once ({gaps})"

    # Engagement over IMAP with XOAUTH2: every receiver saw its warmup mail.
    def engaged() -> bool:
        accounts = warmupctl(config, "accounts")
        return all((a.get("engagement_today") or {}).get("received", 0) >= 6 for a in accounts)
    wait_until(engaged, 30, "each receiver to see its six warmup messages over IMAP")
    accounts = warmupctl(config, "accounts")
    for a in accounts:
        assert a["auth"] == "oauth" and a["last_token_error"] is None and a["token_expires_at"]
    status = warmupctl(config, "status")
    metrics = subprocess.run([sys.executable, "-m", "warmupd.ctl", "--config", str(config), "metrics"],
                             capture_output=True, text=True, timeout=30).stdout
    ok = re.search(r'warmupd_oauth_token_requests_total\{client="rig",result="ok"\} (\d+)', metrics)
    assert ok and int(ok.group(1)) >= 12, metrics
    d.stop()
    issued = srv.issued_tokens()
    assert len(issued) > 3 * 4 * 2, "the access and refresh tokens of every refresh"
    assert_no_secret([d.output(), json.dumps(accounts), json.dumps(status), config.read_text(),
                      check.stdout + check.stderr, metrics], [CLIENT_SECRET, *issued])
    assert not d.errors()


def test_a_rotated_refresh_token_survives_kill9_right_after_rotation(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    # One OAuth account: a strictly rotating server (the old token dies at once) strands
    # a token whose rotation was in flight at the kill; this kill comes after the commit.
    config = refresh_pool(tmp_path, rig, srv, [ALICE], authorized=[ALICE], password_accounts=(BOB,))
    first = daemons(config, tmp_path, env={"WARMUPD_FAULT": "oauth.after_rotation=kill*1"}, wait_ready=False)
    assert first.wait(20) == -9, first.tail()
    assert srv.stats()["rotations"] >= 1  # the server rotated: the token warmupd had is now dead
    t0 = time.time() + 3
    seed_plan(tmp_path, {ALICE: [t0, t0 + 1], BOB: [t0 + 0.5, t0 + 1.5]})
    second = daemons(config, tmp_path)
    wait_rows(tmp_path, lambda rs: len(rs) == 4 and all(r["status"] == "sent" for r in rs), 30,
              "the restarted daemon to send with the rotated token")
    refused = [r for r in srv.stats()["token_requests"] if r["status"] != 200]
    assert refused == [], f"a token request was refused: {refused}"
    second.stop()
    assert not second.errors()


def test_a_revoked_grant_pauses_that_account_only(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    srv.configure(access_ttl=2.0)
    config = refresh_pool(tmp_path, rig, srv, USERS, authorized=USERS)
    t0 = time.time() + 6
    seed_plan(tmp_path, {u: [t0 + i for i in range(4)] for u in USERS})
    d = daemons(config, tmp_path)
    srv.revoke_user("warmupd-test", BOB)
    rows = wait_rows(tmp_path, lambda rs: all(r["status"] not in ("pending", "sending") for r in rs), 40,
                     "every send settled")
    by = {u: [r for r in rows if r["account"] == u] for u in USERS}
    assert all(r["status"] == "sent" for u in (ALICE, CAROL) for r in by[u])
    assert all(r["status"] != "sent" for r in by[BOB]), by[BOB]
    accounts = {a["email"]: a for a in warmupctl(config, "accounts")}
    reason = accounts[BOB]["paused"]
    assert reason and "invalid_grant" in reason and f"warmupd authorize --config {config}" in reason
    assert "invalid_grant" in (accounts[BOB]["last_token_error"] or "")
    assert accounts[ALICE]["paused"] is None and accounts[CAROL]["paused"] is None
    assert d.find("oauth token refused; pausing")
    d.stop()


def test_a_token_the_smtp_server_rejects_once_is_refreshed_and_the_send_goes_out(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB], authorized=[ALICE, BOB])
    t0 = time.time() + 4
    seeded = seed_plan(tmp_path, {ALICE: [t0]})
    d = daemons(config, tmp_path)
    wait_until(lambda: len(srv.stats()["token_requests"]) >= 2, 10, "both accounts' first tokens")
    before = len(srv.stats()["token_requests"])
    rig.smtp.faults.reject_token(ALICE, times=1)
    rows = wait_rows(tmp_path, lambda rs: rs[0]["status"] in ("sent", "failed", "skipped"), 20, "the send")
    assert rows[0]["status"] == "sent", rows[0]
    records = rig.smtp.recorder.wait_for(1, timeout=5)
    assert records[0]["message_id"] == seeded[0].message_id
    assert records[0]["mail_from_at"] - seeded[0].at < 1.0
    after = [r for r in srv.stats()["token_requests"][before:] if r["user"] == ALICE]
    assert len(after) == 1, "the rejected token was replaced by exactly one refresh"
    assert (send_rows(tmp_path)[0]["attempts"]) == 1
    d.stop()
    assert not d.errors()


def test_token_endpoint_down_is_retried_and_sends_go_out(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB], authorized=[ALICE, BOB], grace="30s")
    srv.fail_token_requests(3, mode="500")
    t0 = time.time() + 2
    seed_plan(tmp_path, {ALICE: [t0], BOB: [t0 + 0.5]})
    d = daemons(config, tmp_path, env={"WARMUPD_RETRY_BASE": "1"})
    rows = wait_rows(tmp_path, lambda rs: all(r["status"] == "sent" for r in rs), 40,
                     "both sends, once the token endpoint answers again")
    assert len(rows) == 2
    assert d.find("oauth token request failed; retrying")
    statuses = [r["status"] for r in srv.stats()["token_requests"]]
    assert statuses.count(503) == 3 and statuses[-1] == 200
    d.stop()


# ------------------------------------------------------------------ domain-wide and app-only


@pytest.mark.parametrize("grant", ["service_account", "client_credentials"])
def test_domain_wide_and_app_only_clients_send_for_two_mailboxes(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path, grant: str) -> None:
    """A Google domain (service account, JWT bearer) or a Microsoft tenant (client
    credentials, one app token): two mailboxes each with no consent step; CAROL is a
    password account of the same pool."""
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    secrets = [CLIENT_SECRET]
    if grant == "service_account":
        key = service_account_key(srv, client_email="warmup@proj.iam.test", client_id="sa-client",
                                  users=(ALICE, BOB))
        (tmp_path / "sa.json").write_text(json.dumps(key))
        table = ['provider = "generic"', 'grant = "service_account"', 'key_file = "sa.json"', 'scopes = ["mail"]']
        secrets.append(key["private_key"].splitlines()[1])
    else:
        srv.add_client("tenant-app", client_secret=CLIENT_SECRET, grants=(CREDS,), app_mailboxes=(ALICE, BOB))
        table = ['provider = "generic"', 'grant = "client_credentials"', 'client_id = "tenant-app"',
                 'client_secret_file = "client-secret"', f"token_url = {_q(srv.token_url)}", 'scopes = ["mail"]']
    config = write_config(tmp_path, rig, srv, {ALICE: "org", BOB: "org"}, imap=False, clients={"org": table},
                          password_accounts=(CAROL,))
    check = warmupd("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert "OAuth:" not in check.stdout  # no consent needed for either grant
    t0 = time.time() + 3
    seed_plan(tmp_path, {ALICE: [t0, t0 + 1], BOB: [t0 + 0.5, t0 + 1.5]})
    d = daemons(config, tmp_path)
    wait_rows(tmp_path, lambda rs: len(rs) == 4 and all(r["status"] == "sent" for r in rs), 30,
              "both mailboxes' sends")
    records = rig.smtp.recorder.wait_for(4, timeout=5)
    assert {(r["auth_login"], r["auth_mechanism"]) for r in records} == {(ALICE, "XOAUTH2"), (BOB, "XOAUTH2")}
    requests = [(r["grant_type"], r["user"]) for r in srv.stats()["token_requests"]]
    if grant == "service_account":
        assert sorted(u for g, u in requests if g == JWT) == [ALICE, BOB], requests
    else:
        assert [g for g, _ in requests] == [CREDS], "one app token for the whole tenant"
    d.stop()
    assert_no_secret([d.output()], [*secrets, *srv.issued_tokens()])
    assert not d.errors()


# ------------------------------------------------------------------ consent


def test_authorize_device_flow_as_the_user_would(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB], grants=(REFRESH, DEVICE))
    check = warmupd("check", "--config", str(config))
    assert f"alice@warmup.test: no refresh token stored: run `warmupd authorize --config {config}" in check.stdout
    proc = subprocess.Popen([sys.executable, "-m", "warmupd.cli", "authorize", "--config", str(config),
                             "--account", ALICE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"open (\S+) and enter the code (\S+)", line)
        assert m, line
        assert m.group(1) == srv.verification_url
        srv.approve_device(m.group(2), ALICE)  # the user signs in and approves
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stored a refresh token for alice@warmup.test" in out
    check = warmupd("check", "--config", str(config))
    assert "1 of 2 refresh-token account(s) authorized" in check.stdout


@pytest.mark.parametrize("how", ["redirect", "paste"])
def test_authorize_browser_flow_with_pkce_and_loopback_redirect(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, tmp_path: Path, how: str) -> None:
    """The installed-app flow: the browser reaches warmupd's loopback listener, or (a
    browser on another machine) the operator pastes the final address at the prompt."""
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB], grants=(REFRESH, CODE),
                          redirect_uris=("http://127.0.0.1",))
    proc = subprocess.Popen([sys.executable, "-m", "warmupd.cli", "authorize", "--config", str(config),
                             "--account", BOB, "--flow", "browser"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        while not url.startswith("http"):
            url = proc.stdout.readline().strip()
            assert url or proc.poll() is None
        assert "code_challenge=" in url and "code_challenge_method=S256" in url
        # The browser: the server signs BOB in (login_hint) and redirects to warmupd's listener.
        if how == "redirect":
            r = httpx2.get(url, follow_redirects=True, timeout=10)
            assert r.status_code == 200 and "authorized" in r.text
            out, err = proc.communicate(timeout=30)
        else:
            r = httpx2.get(url, follow_redirects=False, timeout=10)
            final = r.headers["location"]
            assert final.startswith("http://127.0.0.1:") and "code=" in final
            out, err = proc.communicate(input=final + "\n", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stored a refresh token for bob@warmup.test" in out


def test_import_accounts_writes_the_accounts_and_stores_their_tokens(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB])
    text = config.read_text().replace('[daemon]\n', '[daemon]\ninclude = ["accounts.d/*.toml"]\n', 1)
    config.write_text(text)
    token = srv.issue_refresh_token("warmupd-test", CAROL)
    csv = tmp_path / "new.csv"
    csv.write_text("email,provider,client,refresh_token,smtp_host,smtp_port,smtp_security\n"
                   f"{CAROL},generic,rig,{token},127.0.0.1,{rig.smtp_port},none\n")
    done = warmupd("import-accounts", str(csv), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr
    written = (tmp_path / "accounts.d" / "new.toml").read_text()
    assert token not in written and 'auth = "oauth", oauth = "rig"' in written
    check = warmupd("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert "carol@warmup.test" in check.stdout and "1 of 3 refresh-token account(s) authorized" in check.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("email,provider,client,refresh_token\n"
                   f"{ALICE},generic,rig,x\nnobody,generic,rig,y\ndan@warmup.test,google,nope,z\n")
    refused = warmupd("import-accounts", str(bad), "--config", str(config))
    assert refused.returncode == 1
    assert "3 problem(s), nothing imported" in refused.stderr
    assert "line 2" in refused.stderr and "line 3" in refused.stderr and "line 4" in refused.stderr
    assert not (tmp_path / "accounts.d" / "bad.toml").exists()


def test_an_account_without_a_token_is_paused_with_the_fix_and_the_others_run(
        clean_oauth_mailrig: MailRig, clean_oauth_server: OAuthServer, daemons: DaemonFactory,
        tmp_path: Path) -> None:
    rig, srv = clean_oauth_mailrig, clean_oauth_server
    config = refresh_pool(tmp_path, rig, srv, [ALICE, BOB], authorized=[ALICE])
    t0 = time.time() + 3
    seed_plan(tmp_path, {ALICE: [t0], BOB: [t0 + 0.5]})
    d = daemons(config, tmp_path)
    rows = wait_rows(tmp_path, lambda rs: all(r["status"] in ("sent", "skipped") for r in rs), 20, "both settled")
    assert {r["account"]: r["status"] for r in rows} == {ALICE: "sent", BOB: "skipped"}
    bob = next(a for a in warmupctl(config, "accounts") if a["email"] == BOB)
    assert bob["paused"].startswith("OAuth: no refresh token stored")
    assert f"warmupd authorize --config {config} --account {BOB}" in bob["paused"]
    # The operator authorizes bob; a restart resumes him by itself.
    store_tokens(tmp_path, config, {BOB: srv.issue_refresh_token("warmupd-test", BOB)})
    d.stop()
    d2 = daemons(config, tmp_path)
    bob = next(a for a in warmupctl(config, "accounts") if a["email"] == BOB)
    assert bob["paused"] is None
    d2.stop()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("table", "account", "problem"), [
    (['provider = "yahoo"', 'client_id = "x"'], "rig", 'oauth.rig.provider: must be one of google, microsoft, generic'),
    (['provider = "google"', 'grant = "client_credentials"', 'client_id = "x"'], "rig",
     "oauth.rig.grant: the google provider offers no client_credentials grant for mail"),
    (['provider = "microsoft"', 'grant = "service_account"', 'client_id = "x"'], "rig",
     "oauth.rig.grant: the microsoft provider offers no service_account grant"),
    (['provider = "google"', 'grant = "magic"', 'client_id = "x"'], "rig", "oauth.rig.grant: must be one of"),
    (['provider = "google"'], "rig", "oauth.rig.client_id: is required"),
    (['provider = "microsoft"', 'grant = "client_credentials"', 'client_id = "x"',
      'client_secret_file = "client-secret"'], "rig", "client_credentials needs the tenant itself"),
    (['provider = "google"', 'client_id = "x"', 'client_secret_file = "nope"'], "rig",
     "oauth.rig.client_secret_file: client secret file not found"),
    (['provider = "google"', 'grant = "service_account"', 'key_file = "missing.json"'], "rig",
     "oauth.rig.key_file: key file not found"),
    (['provider = "generic"', 'client_id = "x"'], "rig", "oauth.rig.token_url: is required"),
    (['provider = "generic"', 'client_id = "x"', 'token_url = "http://idp.example/token"'], "rig",
     "plain http is for loopback only"),
    (['provider = "google"', 'client_id = "x"'], "other", 'accounts[0].smtp.oauth: names no [oauth] client: other (known: rig)'),
])
def test_oauth_config_problems_name_the_key(tmp_path: Path, table: list[str], account: str, problem: str) -> None:
    (tmp_path / "client-secret").write_text("s\n")
    text = "\n".join(["[oauth.rig]", *table, "",
                      "[[accounts]]", 'email = "a@x.test"', 'start_date = "2026-12-01"',
                      f'smtp = {{ host = "smtp.x.test", auth = "oauth", oauth = "{account}" }}', "",
                      "[[accounts]]", 'email = "b@x.test"', 'start_date = "2026-12-01"',
                      'smtp = { host = "smtp.x.test", password = "pw" }', ""])
    (tmp_path / "config.toml").write_text(text)
    done = warmupd("check", "--config", str(tmp_path / "config.toml"))
    assert done.returncode == 78, done.stdout
    assert problem in done.stderr, done.stderr


def test_auth_oauth_without_a_client_and_with_a_password(tmp_path: Path) -> None:
    text = "\n".join(["[oauth.g]", 'provider = "google"', 'client_id = "x"', "",
                      "[[accounts]]", 'email = "a@x.test"', 'start_date = "2026-12-01"',
                      'smtp = { host = "smtp.x.test", auth = "oauth" }', "",
                      "[[accounts]]", 'email = "b@x.test"', 'start_date = "2026-12-01"',
                      'smtp = { host = "smtp.x.test", auth = "oauth", oauth = "g", password = "pw" }',
                      'imap = { host = "imap.x.test", auth = "token" }', ""])
    (tmp_path / "config.toml").write_text(text)
    done = warmupd("check", "--config", str(tmp_path / "config.toml"))
    assert done.returncode == 78
    assert 'accounts[0].smtp: auth = "oauth" needs oauth = "NAME"' in done.stderr
    assert 'accounts[1].smtp.password: an auth = "oauth" server takes no password' in done.stderr
    assert "accounts[1].imap.auth: must be one of password, oauth" in done.stderr
