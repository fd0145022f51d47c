"""Providers' webhooks: SES through SNS (signed with a certificate) and Postmark (basic auth).

The payloads are laid out as the providers' documentation shows them, with this test's
values. The SNS certificate is the test's own (an RSA key and a certificate named as
Amazon's), handed to the app through its fetch seam in place of the HTTPS fetch.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.delivery.providers import string_to_sign
from newsletter.storage.models import BounceEvent, BounceKind, Member, MemberStatus
from newsletter.web.app import create_app
from tests import steps
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler

TOPIC = "arn:aws:sns:us-east-1:123456789012:newsletter-bounces"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SUBSCRIBE_URL = (
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
    + TOPIC
    + "&Token=2336412f37"
)
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "a-long-postmark-password"
ADDRESS = "li.wei@example.org"


def _key_and_cert(common_name: str) -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


AMAZON_KEY, AMAZON_CERT = _key_and_cert("sns.amazonaws.com")
OTHER_KEY, _ = _key_and_cert("sns.amazonaws.com")


@dataclass
class Hooked:
    client: TestClient
    sessions: sessionmaker[Session]
    fetched: list[str]

    def events(self) -> list[BounceEvent]:
        with self.sessions() as s:
            found = list(s.scalars(select(BounceEvent).order_by(BounceEvent.id)))
            s.expunge_all()
            return found

    def member(self, address: str = ADDRESS) -> Member:
        with self.sessions() as s:
            found = s.scalar(select(Member).where(Member.email == address))
            assert found is not None
            s.expunge(found)
            return found


@pytest.fixture
def hooked(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Hooked]:
    settings: Settings = config.load(
        site / "config.toml",
        env={
            config.SECRET_ENV: SECRET,
            config.POSTMARK_PASSWORD_ENV: POSTMARK_PASSWORD,
        },
        overrides={
            "database": {"url": database_url},
            "smtp": {"port": smtp_server.port},
            "delivery": {"linger_seconds": 0.0},
            "bounces": {"ses_topics": [TOPIC], "postmark_user": POSTMARK_USER},
        },
    )
    from newsletter.storage import db

    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(settings, sessions))
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return AMAZON_CERT if url == CERT_URL else b""

    app = create_app(settings, sessions, background=False, fetch=fetch)
    with TestClient(app) as client:
        yield Hooked(client, sessions, fetched)
    sessions.kw["bind"].dispose()


# --- SES through SNS ---------------------------------------------------------------------------


def ses_bounce(address: str = ADDRESS, bounce_type: str = "Permanent") -> dict[str, Any]:
    """An SES bounce notification as the SES developer guide shows one."""
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1" if bounce_type == "Permanent" else "4.4.7",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-12-07T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "reportingMTA": "dsn; a27-23.smtp-out.us-east-1.amazonses.com",
        },
        "mail": {
            "timestamp": "2026-12-07T14:59:38.237Z",
            "source": "news@example.org",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.org",
            "sendingAccountId": "123456789012",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [address],
            "headersTruncated": False,
            "commonHeaders": {
                "from": ["China IP <news@example.org>"],
                "to": [address],
                "subject": "China IP: this week",
            },
        },
    }


def ses_complaint(address: str = ADDRESS) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2026-12-07T14:59:38.237Z",
            "timestamp": "2026-12-07T14:59:38.237Z",
            "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
        },
        "mail": ses_bounce(address)["mail"],
    }


def sns(
    notice: dict[str, Any],
    *,
    version: str = "2",
    key: rsa.RSAPrivateKey = AMAZON_KEY,
    message_id: str = "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
) -> dict[str, Any]:
    """An SNS Notification as AWS documents the HTTP/S message body, signed with `key`."""
    message: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(notice),
        "Timestamp": "2026-12-07T15:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    return sign(message, key=key)


def sign(message: dict[str, Any], *, key: rsa.RSAPrivateKey = AMAZON_KEY) -> dict[str, Any]:
    algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
    signature = key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def test_a_signed_ses_bounce_is_applied_once(hooked: Hooked) -> None:
    body = sns(ses_bounce())
    answer = hooked.client.post("/hooks/ses", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"].startswith("applied")
    (event,) = hooked.events()
    assert (event.kind, event.status, event.source) == (BounceKind.HARD, "5.1.1", "ses")
    assert hooked.member().bounce_score == 1
    assert hooked.fetched == [CERT_URL]
    # SNS delivers again when it is unsure: the same MessageId counts once.
    again = hooked.client.post("/hooks/ses", json=body)
    assert again.json()["message"].startswith("duplicate")
    assert len(hooked.events()) == 1
    assert hooked.fetched == [CERT_URL]  # the certificate is kept


def test_a_signed_ses_complaint_unsubscribes_with_signature_version_1(hooked: Hooked) -> None:
    answer = hooked.client.post("/hooks/ses", json=sns(ses_complaint(), version="1"))
    assert answer.status_code == 200, answer.text
    member = hooked.member()
    assert (member.status, member.left_reason) == (MemberStatus.UNSUBSCRIBED, "complaint")


def test_a_subscription_is_confirmed_by_fetching_its_url(hooked: Hooked) -> None:
    message = sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic " + TOPIC,
            "SubscribeURL": SUBSCRIBE_URL,
            "Timestamp": "2026-12-07T15:00:00.000Z",
            "SignatureVersion": "2",
            "SigningCertURL": CERT_URL,
        }
    )
    answer = hooked.client.post("/hooks/ses", json=message)
    assert answer.status_code == 200, answer.text
    assert hooked.fetched == [CERT_URL, SUBSCRIBE_URL]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"TopicArn": "arn:aws:sns:us-east-1:123456789012:someone-else"}, "TopicArn"),
        ({"SigningCertURL": "https://evil.example.com/cert.pem"}, "SigningCertURL"),
        ({"SigningCertURL": "http://sns.us-east-1.amazonaws.com/x.pem"}, "SigningCertURL"),
        ({"SignatureVersion": "3"}, "SignatureVersion"),
        ({"Signature": "not base64!"}, "base64"),
    ],
)
def test_an_sns_message_that_is_not_amazons_is_refused(
    hooked: Hooked, change: dict[str, str], why: str
) -> None:
    body = {**sns(ses_bounce()), **change}
    answer = hooked.client.post("/hooks/ses", json=body)
    assert answer.status_code == 403
    assert why in answer.json()["message"]
    assert hooked.events() == []


def test_an_sns_message_signed_by_another_key_is_refused(hooked: Hooked) -> None:
    answer = hooked.client.post("/hooks/ses", json=sns(ses_bounce(), key=OTHER_KEY))
    assert answer.status_code == 403
    assert "does not match" in answer.json()["message"]
    assert hooked.events() == []


SIGNED_FIELDS = ["Message", "MessageId", "Subject", "Timestamp", "Type"]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(SIGNED_FIELDS), value=st.text(max_size=200))
def test_an_altered_sns_message_is_refused(hooked: Hooked, field: str, value: str) -> None:
    genuine = sns(ses_bounce())
    altered = copy.deepcopy(genuine)
    altered[field] = value
    if altered[field] == genuine[field]:
        return
    answer = hooked.client.post("/hooks/ses", json=altered)
    assert answer.status_code == 403
    assert hooked.events() == []
    assert hooked.member().bounce_score == 0


# --- Postmark ----------------------------------------------------------------------------------


def postmark_bounce(address: str = ADDRESS, kind: str = "HardBounce") -> dict[str, Any]:
    """A Postmark bounce webhook record as Postmark's documentation shows one."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": kind,
        "TypeCode": 1 if kind == "HardBounce" else 4096,
        "Name": "Hard bounce",
        "Tag": "newsletter",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": address,
        "From": "news@example.org",
        "BouncedAt": "2026-12-07T14:59:38Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "China IP: this week",
        "Content": "",
    }


def postmark_complaint(address: str = ADDRESS) -> dict[str, Any]:
    return {
        **postmark_bounce(address),
        "RecordType": "SpamComplaint",
        "ID": 42,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
    }


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_postmark_records_with_the_right_credentials_are_applied(hooked: Hooked) -> None:
    auth = basic(POSTMARK_USER, POSTMARK_PASSWORD)
    answer = hooked.client.post("/hooks/postmark", json=postmark_bounce(), headers=auth)
    assert answer.status_code == 200, answer.text
    (event,) = hooked.events()
    assert (event.kind, event.source) == (BounceKind.HARD, "postmark")
    soft = postmark_bounce("wang.fang@example.org", "SoftBounce") | {"ID": 7}
    hooked.client.post("/hooks/postmark", json=soft, headers=auth)
    assert hooked.member("wang.fang@example.org").bounce_score == 0.5
    hooked.client.post("/hooks/postmark", json=postmark_complaint(), headers=auth)
    member = hooked.member()
    assert (member.status, member.left_reason) == (MemberStatus.UNSUBSCRIBED, "complaint")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=st.text(max_size=30),
    password=st.text(max_size=40),
    scheme=st.sampled_from(["Basic", "Bearer", ""]),
)
def test_postmark_refuses_wrong_credentials(
    hooked: Hooked, user: str, password: str, scheme: str
) -> None:
    if (scheme, user, password) == ("Basic", POSTMARK_USER, POSTMARK_PASSWORD):
        return
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"{scheme} {token}".strip()}
    answer = hooked.client.post("/hooks/postmark", json=postmark_bounce(), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert hooked.events() == []
    missing = hooked.client.post("/hooks/postmark", json=postmark_bounce())
    assert missing.status_code == 401


def test_hooks_not_configured_are_not_there(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> None:
    settings = config.load(
        site / "config.toml",
        env={config.SECRET_ENV: SECRET},
        overrides={"database": {"url": database_url}},
    )
    with TestClient(create_app(settings, background=False)) as client:
        assert client.post("/hooks/ses", json=sns(ses_bounce())).status_code == 404
        assert client.post("/hooks/postmark", json=postmark_bounce()).status_code == 404
