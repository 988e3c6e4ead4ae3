"""The OAuth test rig itself: the authorization server (tests/rig/oauth_server.py) and
the mail servers that take its tokens (XOAUTH2/OAUTHBEARER on the SMTP rig, Dovecot's
oauth2 passdb), driven from here with httpx, smtplib and imaplib."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import json
import secrets
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.rig.fixtures import RIG_USERS
from tests.rig.mailrig import MailRig
from tests.rig.oauth_server import DEVICE_CODE, JWT_BEARER, OAuthServer, service_account_key
from tests.rig.smtp_server import SMTPServer

ALICE, BOB = "alice@warmup.test", "bob@warmup.test"
CLIENT, SECRET = "warmupd", "s3cret"


def post_token(
    srv: OAuthServer, auth: tuple[str, str] | None = (CLIENT, SECRET), **form: str
) -> httpx2.Response:
    return httpx2.post(srv.token_url, data=form, auth=auth, timeout=10)


def refresh(srv: OAuthServer, refresh_token: str) -> httpx2.Response:
    return post_token(srv, grant_type="refresh_token", refresh_token=refresh_token)


def access_token_for(srv: OAuthServer, user: str) -> str:
    """A live access token for ``user`` (through a refresh, as the daemon gets them)."""
    resp = refresh(srv, srv.issue_refresh_token(CLIENT, user))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate``; returns the seconds it took (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def oauth(clean_oauth_server: OAuthServer) -> OAuthServer:
    clean_oauth_server.add_client(CLIENT, client_secret=SECRET, app_mailboxes=(BOB,))
    return clean_oauth_server


@pytest.fixture
def oauth_smtp(oauth: OAuthServer) -> Iterator[SMTPServer]:
    server = SMTPServer(users=RIG_USERS, oauth_introspection_url=oauth.introspection_url).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the server


def test_refresh_rotates_and_dead_refresh_tokens_answer_invalid_grant(oauth: OAuthServer) -> None:
    first = oauth.issue_refresh_token(CLIENT, ALICE)
    resp = refresh(oauth, first)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    second = body["refresh_token"]
    assert second != first
    assert oauth.introspect(body["access_token"])["username"] == ALICE

    # the rotated-away token is dead; so is an unknown one
    for dead in (first, "never-issued"):
        resp = refresh(oauth, dead)
        assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")

    # client_secret_post works as well as Basic
    resp = post_token(oauth, auth=None, grant_type="refresh_token", refresh_token=second,
                      client_id=CLIENT, client_secret=SECRET)  # fmt: skip
    assert resp.status_code == 200, resp.text
    third, access = resp.json()["refresh_token"], resp.json()["access_token"]

    assert oauth.revoke_user(CLIENT, ALICE) >= 2
    assert refresh(oauth, third).json()["error"] == "invalid_grant"
    assert oauth.introspect(access) == {"active": False}

    stats = oauth.stats()
    assert stats["rotations"] == 2
    assert [(r["status"], r["user"]) for r in stats["token_requests"]] == [
        (200, ALICE), (400, ALICE), (400, None), (200, ALICE), (400, ALICE),
    ]  # fmt: skip


def test_without_rotation_the_refresh_token_stays_good(oauth: OAuthServer) -> None:
    oauth.configure(rotate_refresh_tokens=False)
    rt = oauth.issue_refresh_token(CLIENT, ALICE)
    for _ in range(2):
        resp = refresh(oauth, rt)
        assert resp.status_code == 200 and "refresh_token" not in resp.json()


def test_access_tokens_expire(oauth: OAuthServer) -> None:
    oauth.configure(access_ttl=1.0)
    issued = time.monotonic()
    resp = refresh(oauth, oauth.issue_refresh_token(CLIENT, ALICE))
    assert resp.json()["expires_in"] == 1
    token = resp.json()["access_token"]
    assert oauth.introspect(token)["active"] is True
    assert oauth.stats()["active_access_tokens"] == 1
    wait_until(lambda: oauth.introspect(token) == {"active": False}, 5.0, "the token to expire")
    assert time.monotonic() - issued >= 0.9
    assert oauth.stats()["active_access_tokens"] == 0


def test_device_flow_end_to_end(oauth: OAuthServer) -> None:
    resp = httpx2.post(oauth.device_authorization_url, data={"scope": "mail"}, auth=(CLIENT, SECRET))
    assert resp.status_code == 200, resp.text
    dev = resp.json()
    assert dev["verification_uri"] == oauth.url + "/device"
    assert (dev["interval"], dev["expires_in"]) == (1, 300)

    def poll() -> httpx2.Response:
        return post_token(oauth, grant_type=DEVICE_CODE, device_code=dev["device_code"])

    assert poll().json()["error"] == "authorization_pending"
    assert poll().json()["error"] == "slow_down"  # polled again at once
    oauth.approve_device(dev["user_code"], ALICE)
    time.sleep(dev["interval"])  # the protocol's own pause between polls
    resp = poll()
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    assert oauth.introspect(tokens["access_token"])["username"] == ALICE
    assert refresh(oauth, tokens["refresh_token"]).status_code == 200
    assert poll().status_code == 400  # a device code gives tokens once
    with pytest.raises(RuntimeError, match="unknown or used code"):
        oauth.approve_device("NOPE-NOPE", ALICE)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_authorization_code_with_pkce(oauth: OAuthServer) -> None:
    oauth.add_client("desktop", client_secret=None)  # a public client
    redirect = "http://127.0.0.1:49321/callback"  # any loopback port (RFC 8252)

    def authorize(challenge: str) -> str:
        resp = httpx2.get(oauth.authorization_url, params={
            "response_type": "code", "client_id": "desktop", "redirect_uri": redirect,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "st8",
            "scope": "mail", "login_hint": ALICE,
        })  # fmt: skip
        assert resp.status_code == 302, resp.text
        location = urlsplit(resp.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
        query = parse_qs(location.query)
        assert query["state"] == ["st8"]
        return query["code"][0]

    def exchange(code: str, verifier: str) -> httpx2.Response:
        return post_token(oauth, auth=None, grant_type="authorization_code", code=code,
                          redirect_uri=redirect, client_id="desktop", code_verifier=verifier)  # fmt: skip

    verifier, challenge = _pkce()
    code = authorize(challenge)
    wrong = exchange(code, _pkce()[0])
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    resp = exchange(code, verifier)
    assert resp.status_code == 200, resp.text
    assert oauth.introspect(resp.json()["access_token"])["username"] == ALICE
    assert "refresh_token" in resp.json()
    assert exchange(code, verifier).json()["error"] == "invalid_grant"  # codes are single-use

    other = httpx2.get(oauth.authorization_url, params={
        "response_type": "code", "client_id": "desktop", "redirect_uri": "http://evil.test/cb",
        "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": ALICE,
    })  # fmt: skip
    assert other.status_code == 400  # a non-loopback, unregistered redirect is never followed


def test_client_credentials_give_an_app_token(oauth: OAuthServer) -> None:
    resp = post_token(oauth, grant_type="client_credentials")
    assert resp.status_code == 200, resp.text
    assert "refresh_token" not in resp.json()
    info = oauth.introspect(resp.json()["access_token"])
    assert info["active"] is True and info["client_id"] == CLIENT
    assert info["app_mailboxes"] == [BOB] and "username" not in info
    bad = post_token(oauth, auth=(CLIENT, "wrong"), grant_type="client_credentials")
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_client")


def _assertion(key: dict[str, str], sub: str, private_pem: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": key["client_email"], "sub": sub, "aud": key["token_uri"], "iat": now,
              "exp": now + 600, "scope": "https://mail.google.com/"}  # fmt: skip
    signing = RSAKey.import_key(private_pem or key["private_key"])
    return jwt.encode({"alg": "RS256", "kid": key["private_key_id"]}, claims, signing)


def test_jwt_bearer_with_a_service_account_key(oauth: OAuthServer) -> None:
    key = service_account_key(oauth, client_email="sa@proj.iam.test", users=(ALICE,))
    assert key["type"] == "service_account" and key["token_uri"] == oauth.token_url
    resp = post_token(oauth, auth=None, grant_type=JWT_BEARER, assertion=_assertion(key, ALICE))
    assert resp.status_code == 200, resp.text
    info = oauth.introspect(resp.json()["access_token"])
    assert (info["username"], info["client_id"], info["scope"]) == (
        ALICE,
        "sa-client",
        "https://mail.google.com/",
    )

    not_delegated = post_token(
        oauth, auth=None, grant_type=JWT_BEARER, assertion=_assertion(key, BOB)
    )
    assert not_delegated.status_code in (400, 401)
    stranger = service_account_key(oauth, client_email="other@proj.iam.test", client_id="other")
    forged = _assertion(key, ALICE, private_pem=stranger["private_key"])
    resp = post_token(oauth, auth=None, grant_type=JWT_BEARER, assertion=forged)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")


def test_token_endpoint_failure_injection(oauth: OAuthServer) -> None:
    rt = oauth.issue_refresh_token(CLIENT, ALICE)
    oauth.fail_token_requests(2, mode="500")
    for _ in range(2):
        resp = refresh(oauth, rt)
        assert (resp.status_code, resp.json()["error"]) == (503, "temporarily_unavailable")
    assert refresh(oauth, rt).status_code == 200  # the faulted requests did not use it up
    assert [r["status"] for r in oauth.stats()["token_requests"]] == [503, 503, 200]

    oauth.fail_token_requests(1, mode="hang")
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(oauth.token_url, data={"grant_type": "client_credentials"},
                   auth=(CLIENT, SECRET), timeout=0.5)  # fmt: skip
    assert post_token(oauth, grant_type="client_credentials").status_code == 200


# --------------------------------------------------------------------------- SMTP


def _smtp_auth(port: int, mechanism: str, initial: str) -> tuple[tuple[int, bytes], list[bytes]]:
    """AUTH with ``initial`` as the initial response; returns the final reply and every
    334 challenge the server sent (answered with an empty line, as clients must)."""
    challenges: list[bytes] = []

    def respond(challenge: bytes | None = None) -> str:
        if challenge is None:
            return initial
        challenges.append(challenge)
        return ""

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as conn:
        conn.ehlo()
        try:
            reply = conn.auth(mechanism, respond)
        except smtplib.SMTPAuthenticationError as exc:
            reply = (exc.smtp_code, exc.smtp_error)
    return reply, challenges


def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def test_smtp_xoauth2_takes_live_tokens_and_refuses_dead_ones(
    oauth: OAuthServer, oauth_smtp: SMTPServer
) -> None:
    token = access_token_for(oauth, ALICE)
    with smtplib.SMTP("127.0.0.1", oauth_smtp.port, timeout=10) as conn:
        conn.ehlo()
        assert {"XOAUTH2", "OAUTHBEARER"} <= set(conn.esmtp_features["auth"].split())
        assert (
            conn.auth("XOAUTH2", lambda c=None: xoauth2(ALICE, token) if c is None else "")[0]
            == 235
        )
        conn.sendmail(ALICE, [BOB], b"Subject: by token\r\n\r\nhello\r\n")
    (msg,) = oauth_smtp.wait_for(1)
    assert (msg["auth_login"], msg["auth_mechanism"], msg["subject"]) == (
        ALICE,
        "XOAUTH2",
        "by token",
    )

    # somebody else's token, then a revoked one: Google's 334 JSON, the empty line, 535
    assert _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(BOB, token))[0][0] == 535
    oauth.revoke_user(CLIENT, ALICE)
    reply, challenges = _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(ALICE, token))
    assert reply == (535, b"5.7.8 Username and Password not accepted")
    assert [json.loads(c) for c in challenges] == [
        {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
    ]


def test_smtp_reject_once_fault_refuses_a_good_token_once(
    oauth: OAuthServer, oauth_smtp: SMTPServer
) -> None:
    token = access_token_for(oauth, ALICE)
    oauth_smtp.faults.reject_token(ALICE, times=1)
    reply, challenges = _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(ALICE, token))
    assert reply[0] == 535 and json.loads(challenges[0])["status"] == "401"
    assert _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(ALICE, token))[0][0] == 235
    assert oauth_smtp.faults.history == [("535", "auth")]


def test_smtp_oauthbearer_and_app_tokens(oauth: OAuthServer, oauth_smtp: SMTPServer) -> None:
    token = access_token_for(oauth, ALICE)
    bearer = (
        f"n,a={ALICE},\x01host=127.0.0.1\x01port={oauth_smtp.port}\x01auth=Bearer {token}\x01\x01"
    )
    assert _smtp_auth(oauth_smtp.port, "OAUTHBEARER", bearer)[0][0] == 235
    oauth.revoke_user(CLIENT, ALICE)
    reply, challenges = _smtp_auth(oauth_smtp.port, "OAUTHBEARER", bearer)
    assert reply[0] == 535 and json.loads(challenges[0])["status"] == "invalid_token"

    # an app token acts for the mailboxes its client may act for, and no others
    app = post_token(oauth, grant_type="client_credentials").json()["access_token"]
    assert _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(BOB, app))[0][0] == 235
    assert _smtp_auth(oauth_smtp.port, "XOAUTH2", xoauth2(ALICE, app))[0][0] == 535


def test_smtp_without_an_introspection_url_offers_no_oauth(smtp_server: SMTPServer) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10) as conn:
        conn.ehlo()
        assert set(conn.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}


# --------------------------------------------------------------------------- Dovecot


def test_dovecot_imap_xoauth2(clean_oauth_mailrig: MailRig, oauth_server: OAuthServer) -> None:
    rig = clean_oauth_mailrig
    oauth_server.add_client(CLIENT, client_secret=SECRET)
    token = access_token_for(oauth_server, ALICE)
    with rig.imap_xoauth2(ALICE, token) as conn:
        typ, _ = conn.select("INBOX")
        assert typ == "OK"
    with rig.imap(BOB):  # passwords still work beside tokens
        pass

    # the SMTP front takes the same token and delivers into Dovecot
    reply, _ = _smtp_auth(rig.smtp_port, "XOAUTH2", xoauth2(ALICE, token))
    assert reply[0] == 235
    with smtplib.SMTP("127.0.0.1", rig.smtp_port, timeout=10) as conn:
        conn.ehlo()
        conn.auth("XOAUTH2", lambda c=None: xoauth2(ALICE, token) if c is None else "")
        conn.sendmail(ALICE, [BOB], b"Subject: via token\r\n\r\nhi\r\n")
    assert [m["subject"] for m in rig.messages(BOB)] == ["via token"]
    assert rig.smtp.recorder.messages[0]["auth_mechanism"] == "XOAUTH2"

    oauth_server.revoke_user(CLIENT, ALICE)
    with (
        pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
        rig.imap_xoauth2(ALICE, token),
    ):
        pass
    with pytest.raises(imaplib.IMAP4.error), rig.imap(ALICE, token):  # a token is no password
        pass


def test_dovecot_refuses_a_token_for_another_user(
    clean_oauth_mailrig: MailRig, oauth_server: OAuthServer
) -> None:
    oauth_server.add_client(CLIENT, client_secret=SECRET)
    token: Any = access_token_for(oauth_server, BOB)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        with clean_oauth_mailrig.imap_xoauth2(ALICE, token):
            pass
