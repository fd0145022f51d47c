"""Real mail servers for tests: a Postfix instance and a Dovecot instance of the test's own.

Each runs from Debian's packages with its own configuration in a temporary folder, on
loopback ports of its own, started in the foreground as a child of the test (so the test
stops it and reaps it) and never touching the system's services or /etc. docs/bounces.md
says how they are started. Both need root (Postfix's master and Dovecot drop privileges to
their own users); without the packages or root the tests skip, and under CI they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI

POSTFIX = "/usr/sbin/postfix"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
DOVECOT = "/usr/sbin/dovecot"


def need(*programs: str) -> None:
    """Skip (or, under CI, fail) when a server's program is missing or we are not root."""
    missing = [p for p in programs if not os.access(p, os.X_OK)]
    why = f"not installed: {', '.join(missing)}" if missing else ""
    if not why and os.geteuid() != 0:
        why = "the mail servers' own instances are started as root"
    if why:
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs postfix and dovecot-imapd)")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s: {_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _own_folder(prefix: str) -> Path:
    # Not under pytest's tmp_path: that is 0700 root, and the servers' users must reach in.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


# --- Postfix -----------------------------------------------------------------------------------

# Only the services a relay needs, none chrooted (the instance has no chroot of its own).
MASTER_CF = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.7
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
smtputf8_enable = no
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
# Everything goes to the downstream server, but the bounce domain, which goes to
# `newsletter bounces serve`.
relayhost = [127.0.0.1]:{relay_port}
transport_maps = texthash:{root}/conf/transport
# One try: a temporary failure (4xx) is returned to the sender at once, as the DSN a
# deferred message gets when its queue lifetime runs out.
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


@dataclass(frozen=True)
class Postfix:
    root: Path
    port: int  # its SMTP server

    @property
    def log(self) -> str:
        return _tail(self.root / "maillog")


@contextlib.contextmanager
def postfix(relay_port: int, transports: dict[str, int]) -> Iterator[Postfix]:
    """A Postfix relay on 127.0.0.1 (a free port) that sends all mail to relay_port, and mail
    for each domain in `transports` to its port."""
    need(POSTFIX, POSTFIX_MASTER)
    root = _own_folder("newsletter-postfix-")
    port = free_port()
    conf = root / "conf"
    conf.mkdir()
    (root / "queue").mkdir()
    (root / "data").mkdir()
    shutil.chown(root / "data", "postfix")
    (conf / "main.cf").write_text(MAIN_CF.format(root=root, relay_port=relay_port))
    (conf / "master.cf").write_text(MASTER_CF.format(port=port))
    (conf / "transport").write_text(
        "".join(f"{domain} smtp:[127.0.0.1]:{p}\n" for domain, p in transports.items())
    )
    # `postfix check` makes the queue's folders with their owners and modes.
    subprocess.run([POSTFIX, "-c", str(conf), "check"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [POSTFIX_MASTER, "-c", str(conf), "-d"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, root / "maillog")
        yield Postfix(root, port)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


# --- Dovecot -----------------------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log
instance_name = newsletter-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/mail/%u
}}
mail_location = maildir:{root}/mail/%u/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


@dataclass(frozen=True)
class Dovecot:
    root: Path
    port: int
    user: str
    password: str


@contextlib.contextmanager
def dovecot() -> Iterator[Dovecot]:
    """A Dovecot IMAP server on 127.0.0.1 (a free port, no TLS: loopback only) with one user,
    its password in a passwd-file, its mail in a Maildir in the instance's folder."""
    need(DOVECOT)
    root = _own_folder("newsletter-dovecot-")
    port = free_port()
    for name in ("run", "state", "mail"):
        (root / name).mkdir()
    shutil.chown(root / "mail", 65534, 65534)
    user, password = "bounces", "imap-password-for-tests"
    (root / "passwd").write_text(f"{user}:{{PLAIN}}{password}\n")
    config = root / "dovecot.conf"
    config.write_text(DOVECOT_CONF.format(root=root, port=port))
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, proc, root / "log")
        yield Dovecot(root, port, user, password)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
