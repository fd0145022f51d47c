"""`newsletter doctor`: checks the site's mail as mailbox providers will, one line a finding."""

from __future__ import annotations

from typing import Annotated

import typer

from newsletter import config, site
from newsletter.cli.app import app, console, state
from newsletter.delivery import doctor as checks


@app.command("doctor")
def doctor(
    nameserver: Annotated[
        str | None,
        typer.Option(
            "--nameserver",
            help="Ask this DNS server (IP or IP:PORT) instead of the system's resolver.",
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip the DNS checks (SPF, DKIM, DMARC, MX).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, max=60, help="Seconds to wait for DNS.")
    ] = 3.0,
) -> None:
    """Check what mailbox providers will make of the site's mail, and say how to fix it.

    Offline: list.base_url is https, the return path's and DKIM's domains align with From,
    the DKIM key (RSA, 2048 bits advised) and selector, and a sample issue and a
    confirmation laid out, DKIM-signed and parsed back (size, 7bit, line lengths, no
    defects, the signature verifies). Then, where DNS answers: SPF of the envelope sender's
    domain, the DKIM TXT record against the configured key, DMARC for the From domain and
    MX for the bounce domain. One line per finding (OK, WARN, FAIL with its fix); exit code
    1 if anything failed, else 0. The database is not touched.
    """
    # Loaded without refusing what is checked here, so every problem is listed at once.
    settings = config.load(state.config_path, mail_checks=False)
    env = site.environment(settings.site_dir)
    lookup = None
    if not offline:
        try:
            resolver = checks.make_resolver(nameserver, timeout)
        except checks.BadNameserver as exc:
            raise typer.BadParameter(str(exc), param_hint="--nameserver") from None
        lookup = checks.lookup_with(resolver)
    findings = checks.run(settings, env, lookup=lookup)
    for finding in findings:
        console.print(finding.line())
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    console.print(
        f"{len(findings)} checks: {failed} failed, {warned} warnings"
        + ("" if failed else " — mailbox providers should accept this site's mail")
    )
    raise typer.Exit(1 if failed else 0)
