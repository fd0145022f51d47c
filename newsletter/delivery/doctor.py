"""`newsletter doctor`: what a mailbox provider will make of the site's mail, and how to fix it.

Offline, from config.toml alone: https links, domains aligned with From (DMARC), the DKIM key
and selector, and a test message of the next issue (and a confirmation) laid out, signed and
parsed back: its size, its lines, 7bit, no parser defects, and a signature that verifies with
the configured key. Then, where DNS answers: the envelope domain's SPF record, the DKIM TXT
record against the configured key, DMARC for the From domain, and MX for the bounce domain.
Each check gives one Finding; a failed one says how to fix it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Literal

import dns.exception
import dns.rdatatype
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jinja2 import Environment
from markupsafe import Markup

from newsletter import deliverability
from newsletter.config import Settings
from newsletter.content import compiler
from newsletter.content.layout import system_message
from newsletter.content.personalize import Personalizer
from newsletter.content.qp import LIMIT as QP_LIMIT
from newsletter.errors import NewsletterError
from newsletter.storage.ledger import Recipient
from newsletter.tokens import Signer

Status = Literal["ok", "warn", "fail"]
SAMPLE = Recipient(member_id=1, email="reader@example.com", name="Sample Reader")
GMAIL_CLIP = 102 * 1024  # Gmail shows "[Message clipped]" past about this much HTML
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*")


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    check: str  # what was checked, e.g. "dkim-dns"
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f" → {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{self.status.upper():4}  {self.check}: {self.message}{fix}"


# --- offline --------------------------------------------------------------------------------


def config_findings(s: Settings) -> list[Finding]:
    """https, alignment and the key, as config.load checks them (doctor loads without)."""
    problems = {p.key: str(p) for p in deliverability.mail_problems(s)}
    lst, found = s.list, []
    from_domain = deliverability.domain_of(lst.from_address)
    bounce_domain = deliverability.domain_of(lst.return_path or lst.from_address)
    if "list.base_url" in problems:
        found.append(
            Finding("fail", "https", problems["list.base_url"], "set list.base_url to https://…")
        )
    else:
        found.append(Finding("ok", "https", f"links start with {lst.base_url}"))
    if "list.return_path" in problems:
        fix = f"use a return_path under {deliverability.organizational_domain(from_domain)}"
        found.append(Finding("fail", "alignment", problems["list.return_path"], fix))
    else:
        found.append(
            Finding(
                "ok", "alignment", f"return path {bounce_domain} aligns with From {from_domain}"
            )
        )
    if s.dkim is None:
        found.append(
            Finding(
                "warn",
                "dkim",
                "no [dkim] table: messages go out unsigned, and DMARC then rests on SPF alone",
                "add [dkim] with an RSA key of 2048 bits (see config.toml)",
            )
        )
        return found
    if "dkim.domain" in problems:
        fix = f"set dkim.domain to {deliverability.organizational_domain(from_domain)} or a name under it"
        found.append(Finding("fail", "alignment", problems["dkim.domain"], fix))
    else:
        found.append(Finding("ok", "alignment", f"DKIM d={s.dkim.domain} aligns with From"))
    if not _SELECTOR.fullmatch(s.dkim.selector):
        found.append(
            Finding(
                "fail",
                "selector",
                f"dkim.selector {s.dkim.selector!r} is not a DNS name",
                "use letters, digits and hyphens, e.g. news2026",
            )
        )
    else:
        found.append(Finding("ok", "selector", f"{s.dkim.selector}._domainkey.{s.dkim.domain}"))
    found.append(_key_finding(s, problems.get("dkim.key_file")))
    return found


def _key_finding(s: Settings, problem: str | None) -> Finding:
    fix = "make one with: openssl genrsa -out var/dkim.pem 2048"
    if problem:
        return Finding("fail", "dkim-key", problem, fix)
    assert s.dkim is not None
    bits = deliverability.rsa_key_bits(s.path(s.dkim.key_file).read_bytes())
    assert isinstance(bits, int)
    if bits < deliverability.GOOD_KEY_BITS:
        return Finding("warn", "dkim-key", f"a {bits}-bit RSA key; 2048 bits are advised", fix)
    return Finding("ok", "dkim-key", f"a {bits}-bit RSA key")


def public_key_b64(s: Settings) -> str | None:
    """The p= value of the configured DKIM key's TXT record; None without a usable key."""
    if s.dkim is None:
        return None
    try:
        key = serialization.load_pem_private_key(
            s.path(s.dkim.key_file).read_bytes(), password=None
        )
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(spki).decode()


def sample_issue(s: Settings, env: Environment) -> compiler.Compiled:
    """An issue of placeholder items, for a site with none waiting: eight reports of about
    1 KB each and the configured survey, in the site's templates."""
    body = "<p>" + "A paragraph of a report, as long as a typical one. " * 20 + "</p>"
    items = [
        compiler.ItemView(
            n,
            f"Sample report {n}",
            s.issue.sections[0] if s.issue.sections else "Reports",
            f"{s.list.base_url.rstrip('/')}/archive",
            Markup(body),
            re.sub("<[^>]+>", "", body),
            None,
        )
        for n in range(1, 9)
    ]
    survey = None
    if s.survey is not None:
        survey = (1, s.survey.question, list(enumerate(s.survey.options, start=1)))
    return compiler.compile_issue(s, env, items, survey)


def message_findings(
    s: Settings, env: Environment, compiled: compiler.Compiled | None, label: str
) -> list[Finding]:
    """Lay out, sign and parse back the next issue's message (or a sample's) and a
    confirmation, as every member's and every subscriber's would be."""
    found = []
    if compiled is None:
        compiled, label = sample_issue(s, env), "a sample issue of 8 placeholder reports"
    html_size = compiled.html_bytes_estimate()
    check = f"HTML of {label}: {html_size / 1024:.1f} KB"
    if html_size > GMAIL_CLIP:
        found.append(Finding("fail", "size", check + " (Gmail clips past 102 KB)", "fewer items"))
    else:
        found.append(Finding("ok", "size", check + " (Gmail clips past 102 KB)"))
    signer = Signer(s.secret_keys) if s.secret_keys else None
    _, issue_message = Personalizer(compiled, s, signer, 1).message(SAMPLE)
    confirm = _confirmation(s, env)
    for what, data in (("issue message", issue_message), ("confirmation", confirm)):
        found.extend(_parsed_back(s, what, data))
    return found


def _confirmation(s: Settings, env: Environment) -> bytes:
    lst = s.list
    context = {
        "list_name": lst.name,
        "language": lst.language,
        "base_url": lst.base_url.rstrip("/"),
        "archive_url": f"{lst.base_url.rstrip('/')}/archive",
        "postal_address": lst.postal_address,
        "subject": f"Confirm your subscription to {lst.name}",
        "preheader": "",
        "name": SAMPLE.name,
        "link": f"{lst.base_url.rstrip('/')}/preview/confirm",
    }
    _, data = system_message(
        from_name=lst.name,
        from_address=lst.from_address,
        to_name=SAMPLE.name,
        to_address=SAMPLE.email,
        subject=context["subject"],
        text=env.get_template("email/confirm.txt").render(context),
        html=env.get_template("email/confirm.html").render(context),
        now=dt.datetime.now(dt.UTC),
    )
    return data


def _parsed_back(s: Settings, what: str, data: bytes) -> Iterator[Finding]:
    if s.dkim is not None and not deliverability.mail_problems(s):
        from newsletter.delivery.signing import signer_for

        dkim_signer = signer_for(s)
        assert dkim_signer is not None
        data = dkim_signer.sign(data)
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    defects = [d for part in msg.walk() for d in part.defects]
    defects += [d for part in msg.walk() for name in part for d in part[name].defects]
    if defects:
        yield Finding("fail", "message", f"the {what} parses with defects: {defects[:3]}")
    else:
        yield Finding(
            "ok", "message", f"the {what} ({len(data) / 1024:.1f} KB) parses back cleanly"
        )
    long_lines = [line for line in data.split(b"\r\n") if len(line) > 78]
    body_lines = [line for line in data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")]
    if not data.isascii() or long_lines or any(len(line) > QP_LIMIT for line in body_lines):
        yield Finding(
            "fail",
            "message",
            f"the {what} has 8bit bytes or lines over 78 characters ({len(long_lines)} long lines)",
            "shorten list.base_url or the list's name",
        )
    if s.dkim is not None and data.startswith(b"DKIM-Signature:"):
        if _verifies(data, s):
            yield Finding("ok", "dkim", f"the {what}'s signature verifies with dkim.key_file")
        else:
            yield Finding("fail", "dkim", f"the {what}'s signature does not verify")


def _verifies(data: bytes, s: Settings) -> bool:
    import dkim  # type: ignore[import-untyped]

    record = f"v=DKIM1; k=rsa; p={public_key_b64(s)}".encode()
    result: bool = dkim.verify(data, dnsfunc=lambda name, timeout=5: record)
    return result


def offline(
    s: Settings, env: Environment, compiled: compiler.Compiled | None, label: str
) -> list[Finding]:
    return [*config_findings(s), *message_findings(s, env, compiled, label)]


# --- DNS ----------------------------------------------------------------------------------------


class DnsUnreachable(NewsletterError):
    pass


class BadNameserver(NewsletterError, ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(
            f"--nameserver {text!r}: not an IP address with an optional port "
            "(1.2.3.4, 1.2.3.4:5353, [2001:db8::1]:53)"
        )


def make_resolver(nameserver: str | None, timeout: float = 3.0) -> dns.resolver.Resolver:
    """The system's resolver, or `nameserver` ("IP" or "IP:PORT", "[IPv6]:PORT", or a bare
    IPv6 address). BadNameserver for anything else."""
    if nameserver is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf: nothing to ask
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    else:
        resolver = dns.resolver.Resolver(configure=False)
        m = re.fullmatch(
            r"\[([0-9a-fA-F:.]+)\](?::([0-9]{1,5}))?|([^:\[\]]+)(?::([0-9]{1,5}))?", nameserver
        )
        host, port = nameserver, "53"
        if m:
            host, port = (m.group(1) or m.group(3)), (m.group(2) or m.group(4) or "53")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise BadNameserver(nameserver) from None
        if not 1 <= int(port) <= 65535:
            raise BadNameserver(nameserver)
        resolver.nameservers = [host]
        resolver.port = int(port)
    resolver.timeout = resolver.lifetime = timeout
    return resolver


Lookup = Callable[[str, str], list[str]]


def lookup_with(resolver: dns.resolver.Resolver) -> Lookup:
    """name, type → the records' texts (TXT strings joined); [] for NXDOMAIN or no answer.
    DnsUnreachable when no server answers."""

    def lookup(name: str, rdtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsUnreachable(f"DNS did not answer for {name} {rdtype}: {exc}") from exc
        out = []
        for rdata in answer:
            if rdata.rdtype == dns.rdatatype.TXT:
                out.append(b"".join(rdata.strings).decode("utf-8", errors="replace"))
            else:
                out.append(rdata.to_text())
        return out

    return lookup


def dns_findings(s: Settings, lookup: Lookup) -> list[Finding]:
    try:
        return [
            _spf(s, lookup),
            *([_dkim_record(s, lookup)] if s.dkim is not None else []),
            _dmarc(s, lookup),
            _mx(s, lookup),
        ]
    except DnsUnreachable as exc:
        return [Finding("warn", "dns", f"{exc}: DNS checks skipped", "use --nameserver IP")]


def _spf(s: Settings, lookup: Lookup) -> Finding:
    domain = deliverability.domain_of(s.list.return_path or s.list.from_address)
    records = [r for r in lookup(domain, "TXT") if r.lower().startswith("v=spf1")]
    fix = f'publish one TXT record at {domain}: "v=spf1 <your relay\'s mechanisms> -all"'
    if not records:
        return Finding("fail", "spf", f"{domain} (the envelope sender's domain) has no SPF", fix)
    if len(records) > 1:
        return Finding("fail", "spf", f"{domain} has {len(records)} SPF records (one only)", fix)
    return Finding("ok", "spf", f"{domain}: {records[0]}")


def _dkim_record(s: Settings, lookup: Lookup) -> Finding:
    assert s.dkim is not None
    name = f"{s.dkim.selector}._domainkey.{s.dkim.domain}"
    expected = public_key_b64(s)
    fix = f'publish a TXT record at {name}: "v=DKIM1; k=rsa; p={expected}"'
    records = [r for r in lookup(name, "TXT") if "p=" in r]
    if not records:
        return Finding("fail", "dkim-dns", f"no DKIM key at {name}", fix)
    tags = dict(
        (k.strip(), v.strip())
        for k, _, v in (t.partition("=") for t in records[0].split(";"))
        if k.strip()
    )
    published = re.sub(r"\s+", "", tags.get("p", ""))
    if published != expected:
        return Finding(
            "fail", "dkim-dns", f"the key at {name} is not the one in dkim.key_file", fix
        )
    return Finding("ok", "dkim-dns", f"{name} publishes the key in dkim.key_file")


def _dmarc(s: Settings, lookup: Lookup) -> Finding:
    from_domain = deliverability.domain_of(s.list.from_address)
    org = deliverability.organizational_domain(from_domain)
    fix = f'publish a TXT record at _dmarc.{org}: "v=DMARC1; p=none; rua=mailto:…"'
    for domain in dict.fromkeys((from_domain, org)):
        records = [r for r in lookup(f"_dmarc.{domain}", "TXT") if r.startswith("v=DMARC1")]
        if records:
            return Finding("ok", "dmarc", f"_dmarc.{domain}: {records[0]}")
    return Finding(
        "fail",
        "dmarc",
        f"no DMARC record for {from_domain} (Gmail and Yahoo ask bulk senders)",
        fix,
    )


def _mx(s: Settings, lookup: Lookup) -> Finding:
    domain = deliverability.domain_of(s.list.return_path or s.list.from_address)
    exchanges = lookup(domain, "MX")
    if [mx.split()[-1] for mx in exchanges] == ["."]:  # RFC 7505: "accepts no mail"
        return Finding(
            "fail",
            "mx",
            f"{domain} publishes a null MX (it accepts no mail): bounces are refused",
            "use a return_path on a domain that receives mail",
        )
    if exchanges:
        return Finding("ok", "mx", f"{domain} receives mail (bounces come back)")
    if lookup(domain, "A") or lookup(domain, "AAAA"):
        return Finding("warn", "mx", f"{domain} has no MX; bounces go to its A record", "add MX")
    return Finding(
        "fail",
        "mx",
        f"{domain} (list.return_path's domain) has no MX: bounces have nowhere to go",
        f"publish an MX record for {domain}",
    )


def run(
    s: Settings,
    env: Environment,
    compiled: compiler.Compiled | None = None,
    label: str = "the issue",
    lookup: Lookup | None = None,
) -> list[Finding]:
    """Every check; the DNS ones only with a lookup. Without `compiled`, the message checks
    use a sample issue of placeholder items in the site's templates."""
    found = offline(s, env, compiled, label)
    if lookup is not None:
        found += dns_findings(s, lookup)
    return found
