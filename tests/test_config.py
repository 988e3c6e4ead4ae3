"""Config loading: a good file loads; every mistake is reported with its key path."""

from __future__ import annotations

import os
import textwrap
from datetime import date
from pathlib import Path

import pytest

from warmupd.config import ConfigError, Secret, load_config, read_socket_path

PASSWORD = "hunter2-Sup3rS3cret"

ACCOUNTS = """
[[accounts]]
email = "alice@example.com"
start_date = 2026-01-05
smtp = { host = "mail.example.com", port = 587, password_file = "alice.pw" }

[[accounts]]
email = "bob@example.com"
start_date = 2026-01-05
smtp = { host = "mail.example.com", password_file = "alice.pw" }
"""


def write(tmp_path: Path, text: str, *, password: bool = True) -> Path:
    if password:
        (tmp_path / "alice.pw").write_text(PASSWORD + "\n")
    p = tmp_path / "config.toml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path, env={} if env is None else env)
    assert ei.value.problems, "a ConfigError must list at least one problem"
    return ei.value.problems


def one_with(probs: list[str], key_path: str, *needles: str) -> str:
    """The problem reported under exactly ``key_path`` that mentions every needle."""
    hits = [p for p in probs if p.startswith(key_path + ": ")
            and all(n.lower() in p.lower() for n in needles)]
    assert hits, f"no problem at {key_path!r} mentioning {needles}; got:\n" + "\n".join(probs)
    return hits[0]


# ---------------------------------------------------------------- a good file


def test_valid_config_loads(tmp_path: Path) -> None:
    p = write(tmp_path, """
        [daemon]
        state_dir = "state"
        grace = "10m"

        [defaults]
        timezone = "Europe/London"
        weekdays = ["mon", "tue", "wed", "thu", "fri"]
        holidays = "GB"
        min_gap = "5m"
        max_per_hour = 6
        ramp = { start = 3, step = 2, max = 30 }
    """ + ACCOUNTS + """
        [[accounts]]
        email = "carol@example.org"
        start_date = "2026-02-02"
        timezone = "Asia/Kolkata"
        smtp = { host = "smtp.example.org", security = "tls", password_env = "CAROL_PW" }
        imap = { host = "imap.example.org", junk_folder = "Spam", poll = "2m" }
    """)
    cfg = load_config(p, env={"CAROL_PW": "carol-secret"})
    assert [a.email for a in cfg.accounts] == ["alice@example.com", "bob@example.com",
                                               "carol@example.org"]
    alice, _, carol = cfg.accounts
    assert alice.start_date == date(2026, 1, 5)
    assert alice.schedule.timezone == "Europe/London"
    assert alice.schedule.min_gap == 300.0
    assert alice.schedule.effective_gap == 600.0  # 3600 / 6 wins over 5m
    assert alice.schedule.ramp.target(1) == 3 and alice.schedule.ramp.target(100) == 30
    assert alice.smtp is not None and alice.smtp.port == 587 and alice.smtp.security == "starttls"
    assert alice.smtp.username == "alice@example.com"
    assert alice.smtp.password == Secret(PASSWORD)  # the trailing newline is stripped
    assert carol.timezone == "Asia/Kolkata" and carol.schedule.ramp.max == 30
    assert carol.smtp is not None and carol.smtp.port == 465
    assert carol.smtp.password is not None and carol.smtp.password.reveal() == "carol-secret"
    assert carol.imap is not None and carol.imap.port == 993 and carol.imap.poll == 120.0
    assert carol.imap.junk_folder == "Spam"
    assert cfg.daemon.state_dir == (tmp_path / "state").resolve()
    assert cfg.daemon.database == cfg.daemon.state_dir / "warmupd.db"
    assert cfg.daemon.socket == cfg.daemon.state_dir / "warmupd.sock"
    assert cfg.daemon.grace == 600.0
    assert sorted(cfg.secrets()) == sorted([PASSWORD, PASSWORD, "carol-secret"])


# ---------------------------------------------------------------- one problem each


def test_unknown_timezone_with_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\ntimezone = "Europe/Londn"\n' + ACCOUNTS)
    msg = one_with(problems(p), "defaults.timezone", "unknown timezone", "Europe/Londn")
    assert '"Europe/London"' in msg


def test_unknown_timezone_on_an_account(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace('start_date = 2026-01-05\nsmtp',
                                         'start_date = 2026-01-05\ntimezone = "Mars/Olympus"\nsmtp', 1))
    one_with(problems(p), "accounts[0].timezone", "unknown timezone", "Mars/Olympus")


def test_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\nmin_gapp = "5m"\n' + ACCOUNTS)
    msg = one_with(problems(p), "defaults.min_gapp", "unknown key")
    assert 'did you mean "min_gap"' in msg


def test_unknown_key_in_account_server(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace("port = 587", "prot = 587"))
    msg = one_with(problems(p), "accounts[0].smtp.prot", "unknown key")
    assert '"port"' in msg


def test_inverted_window(tmp_path: Path) -> None:
    p = write(tmp_path, """
        [defaults.periods.peak]
        windows = ["11:00-09:00"]
        weight = 1.0
    """ + ACCOUNTS)
    one_with(problems(p), "defaults.periods.peak.windows[0]", "inverted", "11:00-09:00")


def test_overlapping_windows(tmp_path: Path) -> None:
    p = write(tmp_path, """
        [defaults.periods.peak]
        windows = ["09:00-11:00"]
        weight = 0.5
        [defaults.periods.normal]
        windows = ["10:30-12:00"]
        weight = 0.5
    """ + ACCOUNTS)
    msg = one_with(problems(p), "defaults.periods", "overlaps")
    assert "10:30-12:00" in msg and "09:00-11:00" in msg


def test_weights_must_sum_to_one(tmp_path: Path) -> None:
    p = write(tmp_path, """
        [defaults.periods.peak]
        windows = ["09:00-11:00"]
        weight = 0.5
        [defaults.periods.normal]
        windows = ["13:00-15:00"]
        weight = 0.3
    """ + ACCOUNTS)
    one_with(problems(p), "defaults.periods", "sum to 1", "0.8")


def test_min_gap_too_big_for_ramp_max(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\nmin_gap = "30m"\nramp = { max = 40 }\n' + ACCOUNTS)
    probs = problems(p)
    msg = one_with(probs, "defaults.periods.peak", "cannot fit", "30m")
    assert "24 sends" in msg  # 60% of 40


def test_max_per_hour_too_low_for_ramp_max(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\nmax_per_hour = 2\n' + ACCOUNTS)
    one_with(problems(p), "defaults.periods.peak", "cannot fit", "max_per_hour 2")


def test_duplicate_account_email(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace("bob@example.com", "Alice@Example.com"))
    one_with(problems(p), "accounts[1].email", "duplicate", "accounts[0]")


def test_malformed_email(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace("bob@example.com", "bob-at-example.com"))
    probs = problems(p)
    one_with(probs, "accounts[1].email", "bob-at-example.com")
    # The bad address is the one mistake: no knock-on complaint about a username
    # the user never wrote.
    assert not [x for x in probs if x.startswith("accounts[1].smtp")], probs


def test_missing_password_file(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace('password_file = "alice.pw" }\n\n', 'password_file = "nope.pw" }\n\n'))
    msg = one_with(problems(p), "accounts[0].smtp.password_file", "not found")
    assert str(tmp_path / "nope.pw") in msg


def test_unreadable_password_file(tmp_path: Path) -> None:
    # A folder is refused before it is opened (not a regular file).
    (tmp_path / "pwdir").mkdir()
    p = write(tmp_path, ACCOUNTS.replace('password_file = "alice.pw" }\n\n', 'password_file = "pwdir" }\n\n'))
    msg = one_with(problems(p), "accounts[0].smtp.password_file", "is a folder, not a regular file")
    assert "pwdir" in msg
    if os.geteuid() != 0:  # chmod 000 does not stop root
        (tmp_path / "locked.pw").write_text("x\n")
        (tmp_path / "locked.pw").chmod(0)
        p = write(tmp_path, ACCOUNTS.replace('password_file = "alice.pw" }\n\n',
                                             'password_file = "locked.pw" }\n\n'))
        one_with(problems(p), "accounts[0].smtp.password_file", "cannot read", "locked.pw")


def test_empty_password_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pw").write_text("\n")
    p = write(tmp_path, ACCOUNTS.replace('password_file = "alice.pw" }\n\n', 'password_file = "empty.pw" }\n\n'))
    one_with(problems(p), "accounts[0].smtp.password_file", "empty")


def test_account_without_possible_recipient(tmp_path: Path) -> None:
    single = ACCOUNTS.split("[[accounts]]")[1]
    p = write(tmp_path, "[[accounts]]" + single)
    one_with(problems(p), "accounts[0]", "no possible recipient")
    # ... and extra_recipients fixes it.
    p = write(tmp_path, "[[accounts]]" + single.replace(
        "start_date", 'extra_recipients = ["seed@example.net"]\nstart_date'))
    cfg = load_config(p, env={})
    assert cfg.accounts[0].extra_recipients == ("seed@example.net",)


@pytest.mark.parametrize("ramp, bad", [
    ("{ start = 0 }", "start"),
    ("{ step = 0 }", "step"),
    ("{ max = -5 }", "max"),
    ("{ start = -1, step = 2, max = 40 }", "start"),
])
def test_zero_and_negative_ramp_values(tmp_path: Path, ramp: str, bad: str) -> None:
    p = write(tmp_path, f"[defaults]\nramp = {ramp}\n" + ACCOUNTS)
    one_with(problems(p), f"defaults.ramp.{bad}", "at least 1")


@pytest.mark.parametrize("value", ['"5x"', '"ten minutes"', '"-3m"', "5", '""'])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    p = write(tmp_path, f"[defaults]\njitter = {value}\n" + ACCOUNTS)
    one_with(problems(p), "defaults.jitter", "duration")


def test_durations_parse(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\njitter = "1m30s"\nmicro_jitter = "0.5s"\n' + ACCOUNTS)
    sched = load_config(p, env={}).accounts[0].schedule
    assert sched.jitter == 90.0 and sched.micro_jitter == 0.5


def test_unknown_holidays_region(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\nholidays = "ZZ"\n' + ACCOUNTS)
    one_with(problems(p), "defaults.holidays", "unknown holidays region", "ZZ")


def test_bad_port(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace("port = 587", "port = 70000"))
    assert "accounts[0].smtp.port: must be 1-65535, got 70000" in problems(p)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS + "oops = = 3\n")
    line = ACCOUNTS.count("\n") + 1
    (msg,) = problems(p)
    assert "TOML syntax error" in msg
    assert f"line {line}" in msg and "column" in msg


def test_missing_file(tmp_path: Path) -> None:
    (msg,) = problems(tmp_path / "absent.toml")
    assert "not found" in msg


# ---------------------------------------------------------------- all at once


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    p = write(tmp_path, """
        [defaults]
        timezone = "Europe/Londn"
        min_gapp = "4m"
        jitter = "3 minutes"
    """ + ACCOUNTS.replace("port = 587", "port = 70000").replace("bob@example.com", "bob@")
        + """
        [[accounts]]
        email = "alice@example.com"
        start_date = "2026-13-01"
        smtp = { host = "mail.example.com", password_file = "missing.pw" }
    """)
    probs = problems(p)
    one_with(probs, "defaults.timezone", "Europe/Londn")
    one_with(probs, "defaults.min_gapp", "min_gap")
    one_with(probs, "defaults.jitter", "duration")
    one_with(probs, "accounts[0].smtp.port", "70000")
    one_with(probs, "accounts[1].email", "bob@")
    one_with(probs, "accounts[2].email", "duplicate")
    one_with(probs, "accounts[2].start_date", "2026-13-01")
    one_with(probs, "accounts[2].smtp.password_file", "not found")
    assert len(probs) == len(set(probs)), "a problem is listed twice"
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    text = str(ei.value)
    assert f"{len(probs)} problem(s)" in text
    assert all(x in text for x in probs)


def test_defaults_problem_reported_once_with_account_overrides(tmp_path: Path) -> None:
    """An account overriding one schedule key still inherits [defaults]' bad value;
    the problem is listed once, not once per account."""
    p = write(tmp_path, '[defaults]\ntimezone = "Nowhere/Atall"\n'
              + ACCOUNTS.replace("start_date = 2026-01-05\nsmtp", 'start_date = 2026-01-05\nmin_gap = "5m"\nsmtp'))
    probs = problems(p)
    assert len([x for x in probs if "Nowhere/Atall" in x]) == 1, probs


# ---------------------------------------------------------------- passwords


def _creds_config(tmp_path: Path) -> Path:
    (tmp_path / "alice.pw").write_text("from-config-folder\n")
    return write(tmp_path, ACCOUNTS, password=False)


def test_password_file_prefers_credentials_directory(tmp_path: Path) -> None:
    p = _creds_config(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "alice.pw").write_text("from-credentials\n")
    cfg = load_config(p, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.accounts[0].smtp.password.reveal() == "from-credentials"  # type: ignore[union-attr]


def test_password_file_falls_back_to_config_folder(tmp_path: Path) -> None:
    p = _creds_config(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()  # empty: the credential is not there
    cfg = load_config(p, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.accounts[0].smtp.password.reveal() == "from-config-folder"  # type: ignore[union-attr]
    cfg = load_config(p, env={})
    assert cfg.accounts[0].smtp.password.reveal() == "from-config-folder"  # type: ignore[union-attr]


def test_password_env(tmp_path: Path) -> None:
    text = ACCOUNTS.replace('password_file = "alice.pw" }\n\n', 'password_env = "ALICE_PW" }\n\n')
    p = write(tmp_path, text)
    cfg = load_config(p, env={"ALICE_PW": "env-secret"})
    assert cfg.accounts[0].smtp.password.reveal() == "env-secret"  # type: ignore[union-attr]
    msg = one_with(problems(p, env={}), "accounts[0].smtp.password_env", "ALICE_PW", "not set")
    assert "env-secret" not in msg


def test_two_password_sources_refused(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace('password_file = "alice.pw" }\n\n',
                                         'password_file = "alice.pw", password_env = "X" }\n\n'))
    one_with(problems(p, env={"X": "y"}), "accounts[0].smtp", "password_file and password_env")


def test_password_never_in_repr_or_error(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS)
    cfg = load_config(p, env={})
    assert PASSWORD in list(cfg.secrets())
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)
    assert PASSWORD not in repr(cfg.accounts[0].smtp)
    # Broken configs: the secret comes from a file, the environment or inline.
    broken = ACCOUNTS.replace("port = 587", 'port = "587"').replace(
        'password_file = "alice.pw" }\n\n', f'password = "{PASSWORD}", pasword = "{PASSWORD}" }}\n\n')
    p = write(tmp_path, '[defaults]\nmin_gapp = "4m"\n' + broken)
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={"PW": PASSWORD})
    assert len(ei.value.problems) >= 3
    assert PASSWORD not in str(ei.value) and PASSWORD not in repr(ei.value)


# ---------------------------------------------------------------- systemd directories and the socket


def test_state_and_runtime_directory_override(tmp_path: Path) -> None:
    p = write(tmp_path, '[daemon]\nstate_dir = "mine"\n' + ACCOUNTS)
    cfg = load_config(p, env={"STATE_DIRECTORY": "/var/lib/warmupd"})
    assert cfg.daemon.state_dir == Path("/var/lib/warmupd")
    assert cfg.daemon.database == Path("/var/lib/warmupd/warmupd.db")
    assert cfg.daemon.socket == Path("/var/lib/warmupd/warmupd.sock")
    cfg = load_config(p, env={"STATE_DIRECTORY": "/var/lib/warmupd:/var/lib/other",
                              "RUNTIME_DIRECTORY": "/run/warmupd"})
    assert cfg.daemon.state_dir == Path("/var/lib/warmupd")
    assert cfg.daemon.socket == Path("/run/warmupd/warmupd.sock")
    cfg = load_config(p, env={})
    assert cfg.daemon.state_dir == (tmp_path / "mine").resolve()


def test_read_socket_path_despite_syntax_error(tmp_path: Path) -> None:
    p = write(tmp_path, '[daemon]\nsocket = "run/w.sock"\n' + ACCOUNTS + "broken = = =\n")
    problems(p)  # the file does not load ...
    assert read_socket_path(p) == (tmp_path / "run" / "w.sock").resolve()  # ... the socket is found
    p = write(tmp_path, '[daemon]\nstate_dir = "st"\n' + ACCOUNTS + "[[[\n")
    assert read_socket_path(p) == (tmp_path / "st" / "warmupd.sock").resolve()
    p = write(tmp_path, '[daemon]\nsocket = "x.sock"\n' + ACCOUNTS)
    assert read_socket_path(p) == load_config(p, env={}).daemon.socket


# ---------------------------------------------------------------- daemon keys


def test_store_stall_limit(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ACCOUNTS), env={})
    assert cfg.daemon.store_stall_limit == 300.0  # "5m"
    cfg = load_config(write(tmp_path, '[daemon]\nstore_stall_limit = "1m30s"\n' + ACCOUNTS), env={})
    assert cfg.daemon.store_stall_limit == 90.0
    for bad, needle in (('"0s"', "longer than zero"), ('"soon"', "duration"), ("0", "longer than zero")):
        p = write(tmp_path, f"[daemon]\nstore_stall_limit = {bad}\n" + ACCOUNTS)
        one_with(problems(p), "daemon.store_stall_limit", needle)


# ---------------------------------------------------------------- included account files


def account(email: str, port: int = 587) -> str:
    return (f'[[accounts]]\nemail = "{email}"\nstart_date = 2026-01-05\n'
            f'smtp = {{ host = "mail.example.com", port = {port}, password_file = "alice.pw" }}\n\n')


def include_dir(tmp_path: Path, files: dict[str, str], folder: str = "accounts.d") -> None:
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_include_appends_files_in_name_order(tmp_path: Path) -> None:
    include_dir(tmp_path, {
        "us.toml": account("us1@example.com") + account("us2@example.com"),
        "eu.toml": account("eu1@example.com"),
        "notes.txt": "not TOML, and not matched",
    })
    include_dir(tmp_path, {"b.toml": account("more@example.com")}, folder="more")
    # Two patterns: their matches are merged in name order; eu.toml is matched twice, read once.
    p = write(tmp_path, '[daemon]\ninclude = ["more/*.toml", "accounts.d/*.toml", '
                        '"accounts.d/eu.toml", "nothing/*.toml"]\n' + ACCOUNTS)
    cfg = load_config(p, env={})
    assert [a.email for a in cfg.accounts] == [
        "alice@example.com", "bob@example.com",  # the main file's first
        "eu1@example.com", "us1@example.com", "us2@example.com", "more@example.com"]
    # password_file in an included file is found next to the main config file
    assert cfg.accounts[2].smtp is not None and cfg.accounts[2].smtp.password == Secret(PASSWORD)


def test_include_password_file_uses_credentials_directory(tmp_path: Path) -> None:
    include_dir(tmp_path, {"eu.toml": account("eu1@example.com")})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pw_alice.pw").write_text("from-credentials\n")  # LoadCredential=pw:/a/folder
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n' + ACCOUNTS)
    cfg = load_config(p, env={"CREDENTIALS_DIRECTORY": str(creds)})
    eu = cfg.account("eu1@example.com")
    assert eu is not None and eu.smtp is not None
    assert eu.smtp.password == Secret("from-credentials")


def test_include_problem_names_file_and_key_path(tmp_path: Path) -> None:
    include_dir(tmp_path, {"eu.toml": account("a@example.com") + account("b@example.com")
                           + account("c@example.com") + account("d@example.com", port=70000)})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n'
              + ACCOUNTS.replace("port = 587", "port = 70000"))
    probs = problems(p)
    assert "accounts.d/eu.toml: accounts[3].smtp.port: must be 1-65535, got 70000" in probs
    assert "accounts[0].smtp.port: must be 1-65535, got 70000" in probs  # the main file's own
    assert len(probs) == 2, probs


def test_include_syntax_error_names_file(tmp_path: Path) -> None:
    include_dir(tmp_path, {"eu.toml": account("eu@example.com") + "oops = = 3\n",
                           "us.toml": account("us@example.com", port=0)})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n' + ACCOUNTS)
    probs = problems(p)
    msg = one_with(probs, "accounts.d/eu.toml", "TOML syntax error")
    assert "line 6" in msg and "column" in msg
    # the other included file is still checked
    one_with(probs, "accounts.d/us.toml: accounts[0].smtp.port", "1-65535")


def test_include_holds_accounts_only(tmp_path: Path) -> None:
    include_dir(tmp_path, {"eu.toml": '[defaults]\ntimezone = "Europe/Paris"\n\n'
                           + account("eu@example.com")})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n' + ACCOUNTS)
    (msg,) = problems(p)
    assert msg.startswith("accounts.d/eu.toml: defaults: ") and "[[accounts]]" in msg


def test_include_duplicate_email_across_files(tmp_path: Path) -> None:
    include_dir(tmp_path, {"eu.toml": account("x@example.com") + account("y@example.com"),
                           "us.toml": account("Y@Example.com") + account("bob@example.com")})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n' + ACCOUNTS)
    probs = problems(p)
    msg = one_with(probs, "accounts.d/us.toml: accounts[0].email", "duplicate")
    assert "accounts[1] of accounts.d/eu.toml" in msg
    msg = one_with(probs, "accounts.d/us.toml: accounts[1].email", "duplicate")
    assert msg.endswith("already accounts[1]")  # bob is the main file's second account
    assert len(probs) == 2, probs


def test_include_must_be_a_list_of_patterns(tmp_path: Path) -> None:
    p = write(tmp_path, '[daemon]\ninclude = "accounts.d/*.toml"\n' + ACCOUNTS)
    one_with(problems(p), "daemon.include", "list of glob patterns")
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml", 3]\n' + ACCOUNTS)
    one_with(problems(p), "daemon.include[1]", "glob pattern", "3")


def test_include_that_matches_nothing_is_fine(tmp_path: Path) -> None:
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n' + ACCOUNTS)
    assert len(load_config(p, env={}).accounts) == 2
    # ... unless no account is left at all; then the message says why
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n')
    one_with(problems(p), "accounts", "no accounts configured", "matched no file")


def test_include_skips_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "extra.toml").write_text(account("carol@example.com"))
    p = write(tmp_path, '[daemon]\ninclude = ["*.toml"]\n' + ACCOUNTS)
    assert [a.email for a in load_config(p, env={}).accounts] == [
        "alice@example.com", "bob@example.com", "carol@example.com"]


def test_include_ten_thousand_accounts(tmp_path: Path) -> None:
    """A big pool split over files loads (about 0.7 s here, on a 2-core machine)."""
    include_dir(tmp_path, {
        f"pool-{f:02d}.toml": "".join(account(f"user{f:02d}-{n:04d}@pool.example.com")
                                      for n in range(1000))
        for f in range(10)})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n')
    cfg = load_config(p, env={})
    assert len(cfg.accounts) == 10_000
    assert cfg.accounts[0].email == "user00-0000@pool.example.com"
    assert cfg.accounts[-1].email == "user09-0999@pool.example.com"
    assert len({a.schedule for a in cfg.accounts}) == 1  # [defaults] validated once, shared


def test_read_socket_path_with_a_daemon_key_that_is_not_a_table(tmp_path: Path) -> None:
    p = write(tmp_path, "daemon = 3\n" + ACCOUNTS)
    one_with(problems(p), "daemon", "must be a table")
    assert read_socket_path(p, env={}) == (tmp_path / "var" / "warmupd.sock").resolve()


# ---------------------------------------------------------------- settings shared between accounts
#
# Accounts with equal schedule or engagement settings share one frozen object, built
# once per load. These check that sharing never hides a problem of a later account,
# never names an earlier account's key path, and never mistakes two different values
# for equal ones.


def with_settings(email: str, settings: str) -> str:
    """An account entry with extra settings lines (TOML, no indent)."""
    return (f'[[accounts]]\nemail = "{email}"\nstart_date = 2026-01-05\n{settings}\n'
            'smtp = { host = "mail.example.com", password_file = "alice.pw" }\n\n')


def pool(tmp_path: Path, *settings: str, head: str = "") -> Path:
    return write(tmp_path, head + "".join(with_settings(f"u{i}@example.com", s)
                                          for i, s in enumerate(settings)))


@pytest.mark.parametrize("order", ["good first", "bad first"])
def test_equal_settings_but_one_bad_value_reported_for_each_account(tmp_path: Path,
                                                                    order: str) -> None:
    good = 'timezone = "Asia/Tokyo"\nmin_gap = "5m"'
    bad = 'timezone = "Asia/Tokyo"\nmin_gap = "5x"'
    settings = [good, bad, good, bad] if order == "good first" else [bad, good, bad, good]
    probs = problems(pool(tmp_path, *settings))
    bad_at = [i for i, s in enumerate(settings) if s == bad]
    for i in bad_at:
        one_with(probs, f"accounts[{i}].min_gap", "duration", "5x")
    assert len(probs) == len(bad_at), probs


def test_a_problem_that_still_builds_is_reported_for_each_account(tmp_path: Path) -> None:
    """An unknown key inside a period, ramp or engagement table is a problem, yet the
    object is built: an account repeating it must not take the first one's object."""
    periods = 'periods = { all = { windows = ["09:00-17:00"], weight = 1.0 } }'
    typo = 'periods = { all = { windows = ["09:00-17:00"], weight = 1.0, wieght = 1.0 } }'
    probs = problems(pool(
        tmp_path, periods, typo, typo,
        "ramp = { start = 2 }", "ramp = { start = 2, stpe = 1 }", "ramp = { start = 2, stpe = 1 }",
        "engagement = { reply_rate = 0.5 }", "engagement = { reply_rate = 0.5, replyrate = 1 }",
        "engagement = { reply_rate = 0.5, replyrate = 1 }"))
    for i in (1, 2):
        one_with(probs, f"accounts[{i}].periods.all.wieght", "unknown key", "weight")
    for i in (4, 5):
        one_with(probs, f"accounts[{i}].ramp.stpe", "unknown key", "step")
    for i in (7, 8):
        one_with(probs, f"accounts[{i}].engagement.replyrate", "unknown key", "reply_rate")
    assert len(probs) == 6, probs


def test_equal_in_python_is_not_equal_settings(tmp_path: Path) -> None:
    """true == 1 and 1 == 1.0 in Python; a TOML true is still no whole number, and a
    table's key order (the periods' order) still counts."""
    probs = problems(pool(tmp_path, "ramp = { start = 1 }", "ramp = { start = true }",
                          "max_per_hour = 0", "max_per_hour = false",
                          'holidays = "GB"', 'holidays = "ZZ"', 'holidays = "ZZ"'))
    one_with(probs, "accounts[1].ramp.start", "whole number", "True")
    one_with(probs, "accounts[3].max_per_hour", "whole number", "False")
    one_with(probs, "accounts[5].holidays", "unknown holidays region", "ZZ")
    one_with(probs, "accounts[6].holidays", "unknown holidays region", "ZZ")
    assert len(probs) == 4, probs

    ab = ('periods = { a = { windows = ["09:00-12:00"], weight = 0.5 }, '
          'b = { windows = ["13:00-17:00"], weight = 0.5 } }')
    ba = ('periods = { b = { windows = ["13:00-17:00"], weight = 0.5 }, '
          'a = { windows = ["09:00-12:00"], weight = 0.5 } }')
    zero, minus_zero = (ab.replace("0.5 }, ", "1.0 }, ").replace("0.5 } }", f"{w} }} }}")
                        for w in ("0.0", "-0.0"))
    cfg = load_config(pool(tmp_path, ab, ba, zero, minus_zero), env={})
    s = [a.schedule for a in cfg.accounts]
    assert [p.name for p in s[0].periods] == ["a", "b"]
    assert [p.name for p in s[1].periods] == ["b", "a"]
    assert str(s[2].periods[1].weight) == "0.0" and str(s[3].periods[1].weight) == "-0.0"


def test_equal_settings_share_one_object(tmp_path: Path) -> None:
    tokyo = 'timezone = "Asia/Tokyo"\nramp = { max = 30 }\nengagement = { reply_rate = 0.5 }'
    cfg = load_config(pool(tmp_path, tokyo, "", tokyo, 'timezone = "Europe/Paris"', tokyo, ""),
                      env={})
    a = cfg.accounts
    assert a[0].schedule is a[2].schedule is a[4].schedule
    assert a[0].engagement is a[2].engagement is a[4].engagement
    assert a[1].schedule is a[5].schedule and a[1].schedule.timezone == "UTC"
    assert a[3].schedule.timezone == "Europe/Paris" and a[3].schedule.ramp.max == 40
    assert a[0].schedule.timezone == "Asia/Tokyo" and a[0].schedule.ramp.max == 30
    assert a[0].engagement.reply_rate == 0.5 and a[1].engagement.reply_rate == 0.3
    # An account restating [defaults]' values gets an equal schedule.
    same = pool(tmp_path, 'timezone = "UTC"', "", head='[defaults]\ntimezone = "UTC"\n')
    b = load_config(same, env={}).accounts
    assert b[0].schedule == b[1].schedule


def test_many_zones_and_files_each_problem_named(tmp_path: Path) -> None:
    """More zones than ZoneInfo's own cache keeps (8), over two included files; an
    account in the second file repeating the first file's valid settings but for one
    bad value is reported under its file and index."""
    zones = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney",
             "America/Los_Angeles", "Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo",
             "Africa/Johannesburg", "Asia/Singapore", "Europe/Madrid", "Pacific/Auckland"]

    first = "".join(with_settings(f"a{i}@example.com", f'timezone = "{z}"\nmin_gap = "6m"')
                    for i, z in enumerate(zones))
    second = "".join(with_settings(f"b{i}@example.com", f'timezone = "{z}"\nmin_gap = "6m"')
                     for i, z in enumerate(zones))
    second += with_settings("bad1@example.com", f'timezone = "{zones[3]}"\nmin_gap = "six minutes"')
    second += with_settings("bad2@example.com", f'timezone = "{zones[3]}x"\nmin_gap = "6m"')
    include_dir(tmp_path, {"a.toml": first, "b.toml": second})
    p = write(tmp_path, '[daemon]\ninclude = ["accounts.d/*.toml"]\n')
    probs = problems(p)
    one_with(probs, "accounts.d/b.toml: accounts[12].min_gap", "duration", "six minutes")
    one_with(probs, "accounts.d/b.toml: accounts[13].timezone", "unknown timezone",
             f'did you mean "{zones[3]}"')
    assert len(probs) == 2, probs
    include_dir(tmp_path, {"b.toml": second.rsplit("[[accounts]]", 2)[0]})
    cfg = load_config(p, env={})
    assert [a.timezone for a in cfg.accounts] == zones + zones
    assert len({id(a.schedule) for a in cfg.accounts}) == len(zones)


def test_a_password_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "pw").write_bytes(b"\xff\xfe\x00bad")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[accounts]]\nemail = "a@example.com"\nstart_date = "2026-01-01"\n'
                   'smtp = { host = "127.0.0.1", port = 25, security = "none", password_file = "pw" }\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg, env={})
    assert any(p.startswith("accounts[0].smtp.password_file:") and "not UTF-8" in p for p in e.value.problems), \
        e.value.problems


# ---------------------------------------------------------------- odd input (found by tests/torture/test_fuzz.py)


def test_nan_is_out_of_every_range(tmp_path: Path) -> None:
    p = write(tmp_path, '[defaults]\nperiods = { all = { windows = ["09:00-17:00"], weight = nan } }\n'
                        'engagement = { hold_junk_rate = nan }\n' + ACCOUNTS)
    probs = problems(p)
    one_with(probs, "defaults.periods.all.weight", "must be 0-1", "nan")
    one_with(probs, "defaults.engagement.hold_junk_rate", "must be 0-1", "nan")
    assert len(probs) == 2, probs


def test_start_date_with_a_time_of_day_is_a_problem(tmp_path: Path) -> None:
    p = write(tmp_path, ACCOUNTS.replace("start_date = 2026-01-05", "start_date = 2026-01-05T09:30:00", 1))
    assert problems(p) == ["accounts[0].start_date: must be a date YYYY-MM-DD without a time of day "
                           "(write 2026-01-05), got 2026-01-05T09:30:00"]


@pytest.mark.parametrize("zone", ["America", "Etc", "x" * 300])
def test_a_zone_folder_or_too_long_a_name_is_an_unknown_timezone(tmp_path: Path, zone: str) -> None:
    p = write(tmp_path, f'[defaults]\ntimezone = "{zone}"\n' + ACCOUNTS)
    one_with(problems(p), "defaults.timezone", "unknown timezone")


def test_nul_in_paths_is_a_problem(tmp_path: Path) -> None:
    p = write(tmp_path, '[daemon]\nstate_dir = "v\\u0000ar"\nsocket = "s\\u0000"\n'
                        'include = ["a\\u0000/*.toml"]\n[defaults]\ntemplates = "t\\u0000"\n'
                        + ACCOUNTS.replace('"alice.pw" }', '"pw\\u0000", ca_file = "c\\u0000" }', 1))
    probs = problems(p)
    for at in ("daemon.state_dir", "daemon.socket", "daemon.include[0]", "defaults.templates",
               "accounts[0].smtp.password_file", "accounts[0].smtp.ca_file"):
        one_with(probs, at, "without a NUL character")
    assert len(probs) == 6, probs  # defaults.templates once, not once per account


def test_password_file_must_be_a_small_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.pw")  # opening it would wait for a writer for ever
    (tmp_path / "big.pw").write_bytes(b"x" * (64 * 1024 + 1))
    (tmp_path / "max.pw").write_bytes(b"y" * (64 * 1024 - 1) + b"\n")
    p = write(tmp_path, ACCOUNTS.replace('"alice.pw" }', '"fifo.pw" }', 1)
              + ACCOUNTS.replace("alice@", "carol@").replace("bob@", "dave@")
              .replace('"alice.pw" }', '"big.pw" }', 1).replace('"alice.pw" }', '"/dev/zero" }'))
    probs = problems(p)
    one_with(probs, "accounts[0].smtp.password_file", "is a FIFO (named pipe), not a regular file")
    one_with(probs, "accounts[2].smtp.password_file", "65,537 bytes, more than 64 KiB")
    one_with(probs, "accounts[3].smtp.password_file", "/dev/zero is a character device")
    assert len(probs) == 3, probs
    p = write(tmp_path, ACCOUNTS.replace('"alice.pw" }', '"max.pw" }', 1))
    assert load_config(p, env={}).accounts[0].smtp.password == Secret("y" * (64 * 1024 - 1))


def test_ca_file_must_be_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ca.fifo")
    (tmp_path / "ca.d").mkdir()
    p = write(tmp_path, ACCOUNTS.replace('"alice.pw" }', '"alice.pw", ca_file = "ca.fifo" }', 1)
              .replace('"alice.pw" }', '"alice.pw", ca_file = "ca.d" }', 1))
    probs = problems(p)
    one_with(probs, "accounts[0].smtp.ca_file", "cannot load CA bundle", "is a FIFO")
    one_with(probs, "accounts[1].smtp.ca_file", "cannot load CA bundle", "is a folder")


def test_keys_that_are_not_bare_are_printed_quoted_and_escaped(tmp_path: Path) -> None:
    p = write(tmp_path, '"" = 1\n[defaults]\n"tab\\there" = 1\n"a.b" = 2\n'
                        '[defaults.periods."x y"]\nwindows = ["09:00-12:00"]\nweight = 0.5\n'
                        '[defaults.periods."\\u001b"]\nwindows = ["11:00-17:00"]\nweight = 0.5\n'
                        + ACCOUNTS)
    probs = problems(p)
    one_with(probs, '""', "unknown key")
    one_with(probs, 'defaults."tab\\u0009here"', "unknown key")
    one_with(probs, 'defaults."a.b"', "unknown key")
    one_with(probs, "defaults.periods", 'window 11:00-17:00 of "\\u001B" overlaps window '
                                        '09:00-12:00 of "x y"')
    assert not any(ch in "".join(probs) for ch in "\t\x1b\n"), probs


def test_defaults_tables_are_checked_once_where_they_are(tmp_path: Path) -> None:
    """An account overriding a part of ramp/engagement merges the rest from [defaults]:
    [defaults]' unknown keys and bad values are reported there, once."""
    p = pool(tmp_path, "ramp = { start = 1 }\nengagement = { reply_rate = 0.1 }",
             "ramp = { step = 1 }\nengagement = { reply_rate = 0.2 }", "",
             head="[defaults]\nramp = { max = -1, mxa = 3 }\nengagement = { delay = \"1h\", rplyrate = 1 }\n"
                  "tag = 5\n")
    probs = problems(p)
    one_with(probs, "defaults.ramp.mxa", "unknown key", "max")
    one_with(probs, "defaults.ramp.max", "at least 1")
    one_with(probs, "defaults.engagement.rplyrate", "unknown key", "reply_rate")
    one_with(probs, "defaults.engagement.delay", "range of durations")
    one_with(probs, "defaults.tag", "must be a string")
    assert len(probs) == 5, probs


def test_shared_server_settings_are_checked_per_account_and_keep_own_credentials(tmp_path: Path) -> None:
    # Accounts with equal smtp tables (host, port, security) share one checked copy of
    # them (the load at 100,000 accounts depends on it); each keeps its own username and
    # password, and a problem in the shared part is still reported for every account
    # under its own key path.
    (tmp_path / "bob.pw").write_text("bob-0ther-Secret\n")
    text = ACCOUNTS.replace('smtp = { host = "mail.example.com", password_file = "alice.pw" }',
                            'smtp = { host = "mail.example.com", port = 587, username = "bob-login", '
                            'password_file = "bob.pw" }')
    cfg = load_config(write(tmp_path, text), env={})
    alice, bob = cfg.accounts
    assert alice.smtp is not None and bob.smtp is not None
    assert (alice.smtp.username, alice.smtp.password) == ("alice@example.com", Secret(PASSWORD))
    assert (bob.smtp.username, bob.smtp.password) == ("bob-login", Secret("bob-0ther-Secret"))
    assert (alice.smtp.host, alice.smtp.port) == (bob.smtp.host, bob.smtp.port) == ("mail.example.com", 587)

    probs = problems(write(tmp_path, text.replace("port = 587", "port = 0")))
    one_with(probs, "accounts[0].smtp.port", "1-65535")
    one_with(probs, "accounts[1].smtp.port", "1-65535")
