"""`newsletter doctor` against a DNS server on loopback serving good records, then bad ones."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from newsletter.delivery import doctor as checks
from tests.dkimkeys import WEAK_512, rsa_pem, txt_record
from tests.dnsserver import DnsServer, Records, txt

SELECTOR = "news2026"


def doctor(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["COLUMNS"] = "300"
    env["NEWSLETTER_SECRET_KEY"] = "doctor-test-secret-0123456789"
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "doctor", *args],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def good_records(key_pem: bytes | None) -> Records:
    records: dict[tuple[str, str], list[str]] = {
        ("example.org", "TXT"): [txt("v=spf1 ip4:192.0.2.10 -all")],
        ("example.org", "MX"): ["10 mx.example.org."],
        ("example.org", "A"): ["192.0.2.10"],
        ("_dmarc.example.org", "TXT"): [txt("v=DMARC1; p=quarantine; rua=mailto:d@example.org")],
    }
    if key_pem is not None:
        records[(f"{SELECTOR}._domainkey.example.org", "TXT")] = [txt(txt_record(key_pem).decode())]
    return records


def add_dkim(site: Path, pem: bytes, domain: str = "example.org") -> None:
    (site / "var").mkdir(exist_ok=True)
    (site / "var" / "dkim.pem").write_bytes(pem)
    config = site / "config.toml"
    config.write_text(
        config.read_text()
        + f'\n[dkim]\ndomain = "{domain}"\nselector = "{SELECTOR}"\nkey_file = "var/dkim.pem"\n'
    )


def lines(result: subprocess.CompletedProcess[str], status: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(status)]


def test_the_demo_site_passes_and_says_what_was_checked(site: Path) -> None:
    with DnsServer(good_records(None)) as dns:
        result = doctor(site, "--nameserver", dns.address)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result, "FAIL") == []
    checked = {line.split(":")[0].split()[-1] for line in lines(result, "OK")}
    assert {"https", "alignment", "size", "message", "spf", "dmarc", "mx"} <= checked
    assert ("example.org", "TXT") in dns.queries  # the checks asked the server given
    assert ("_dmarc.example.org", "TXT") in dns.queries
    # Without [dkim] the demo says so, and does not fail for it.
    (warning,) = lines(result, "WARN")
    assert "[dkim]" in warning


def test_a_site_with_dkim_and_good_records_passes_every_check(site: Path) -> None:
    pem = rsa_pem(2048)
    add_dkim(site, pem)
    with DnsServer(good_records(pem)) as dns:
        result = doctor(site, "--nameserver", dns.address)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result, "FAIL") == lines(result, "WARN") == []
    text = result.stdout
    assert f"{SELECTOR}._domainkey.example.org publishes the key in dkim.key_file" in text
    assert "signature verifies" in text


def test_a_misconfigured_site_gets_each_problem_named(site: Path) -> None:
    config = site / "config.toml"
    config.write_text(
        config.read_text().replace(
            'base_url = "http://127.0.0.1:8000"', 'base_url = "http://news.example.org"'
        )
    )
    add_dkim(site, WEAK_512, domain="mailer.example.net")  # misaligned, and 512 bits
    other_key = rsa_pem(1024, which=1)
    records = dict(good_records(None))
    # A TXT record for the selector, but with another key in it.
    records[(f"{SELECTOR}._domainkey.mailer.example.net", "TXT")] = [
        txt(txt_record(other_key).decode())
    ]
    with DnsServer(records) as dns:
        result = doctor(site, "--nameserver", dns.address)
    print(result.stdout)
    assert result.returncode == 1
    failed = "\n".join(lines(result, "FAIL"))
    assert "list.base_url" in failed
    assert "https://" in failed
    assert "dkim.domain" in failed
    assert "does not align" in failed
    assert "512-bit" in failed
    assert "not the one in dkim.key_file" in failed
    # Each failure says how to fix it.
    assert all(" → " in line for line in lines(result, "FAIL"))


def test_missing_records_are_named_with_their_fix(site: Path) -> None:
    pem = rsa_pem(2048)
    add_dkim(site, pem)
    with DnsServer({("example.org", "A"): ["192.0.2.10"]}) as dns:
        result = doctor(site, "--nameserver", dns.address)
    print(result.stdout)
    assert result.returncode == 1
    failed = {line.split(":")[0].split()[-1]: line for line in lines(result, "FAIL")}
    assert set(failed) == {"spf", "dkim-dns", "dmarc"}
    assert "v=spf1" in failed["spf"]
    assert "v=DKIM1; k=rsa; p=" in failed["dkim-dns"]
    assert "_dmarc.example.org" in failed["dmarc"]
    # No MX but an A record: bounces still find the domain, with a warning.
    assert any(" mx: " in line for line in lines(result, "WARN"))


def test_a_null_mx_means_bounces_are_refused(site: Path) -> None:
    records = dict(good_records(None))
    records[("example.org", "MX")] = ["0 ."]  # RFC 7505, as example.org really publishes
    with DnsServer(records) as dns:
        result = doctor(site, "--nameserver", dns.address)
    assert result.returncode == 1
    (failed,) = lines(result, "FAIL")
    assert "null MX" in failed


def test_a_dns_server_that_does_not_answer_skips_the_dns_checks(site: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes queries, answers none
        port = silent.getsockname()[1]
        result = doctor(site, "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.5")
    print(result.stdout)
    assert result.returncode == 0
    assert any("DNS checks skipped" in line for line in lines(result, "WARN"))


@pytest.mark.parametrize("flag", ["--offline"])
def test_offline_asks_no_dns(site: Path, flag: str) -> None:
    with DnsServer(good_records(None)) as dns:
        result = doctor(site, flag, "--nameserver", dns.address)
    assert result.returncode == 0
    assert dns.queries == []
    assert " spf: " not in result.stdout


def nameserver_of(text: str) -> tuple[str, int] | None:
    """What --nameserver TEXT should mean, worked out another way: (address, port) or None."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if rest == "" else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        return None
    return host, int(port)


NAMESERVER_LIKE = st.from_regex(r"\[?[0-9a-f:.]{1,20}\]?(:[0-9]{1,6})?", fullmatch=True)


@given(st.text(max_size=40) | NAMESERVER_LIKE)
@example("localhost")
@example("1.2.3.4:99999")
@example("1.2.3.4:0")
@example("[::1]:53")
@example("::1")
def test_a_nameserver_is_an_ip_address_with_an_optional_port(text: str) -> None:
    expected = nameserver_of(text)
    if expected is None:
        with pytest.raises(checks.BadNameserver, match="--nameserver"):
            checks.make_resolver(text)
        return
    resolver = checks.make_resolver(text)
    assert (str(resolver.nameservers[0]), resolver.port) == expected


def test_a_bad_nameserver_is_refused_by_name(site: Path) -> None:
    result = doctor(site, "--nameserver", "dns.example.org")
    assert result.returncode == 2
    assert "--nameserver" in result.stderr
    assert "Traceback" not in result.stderr
