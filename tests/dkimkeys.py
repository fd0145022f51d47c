"""DKIM keys for tests: RSA keys made once per size, a 512-bit one, and their DNS TXT records."""

from __future__ import annotations

import base64
import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# cryptography refuses to make keys under 1024 bits; this one was made with `openssl genrsa
# 512`. It guards nothing: it is here to be refused.
WEAK_512 = b"""-----BEGIN PRIVATE KEY-----
MIIBUwIBADANBgkqhkiG9w0BAQEFAASCAT0wggE5AgEAAkEAp0XC/3eIXuitSHLU
odM5bkX3COcpPWq8VA4lujHqsWbjKkQoCw6NZl5AWSROnft5d8MhLepBrktF6qwX
JQa7MQIDAQABAkAwInARqakRfq1WusybYLgXFoUXB8YjSVK2cXfD09dwgu7PLY8l
rtXpIBp5JzEOJPK4u2MaexNb2qxBgnvND7gBAiEA1upzWTELacZ9IGGKhrCxtDIk
70Oc5Z0bau3Roxy807ECIQDHP74nACgYIKVqnATFj3YzlP/rYmSFEBZEIfgmXZ+/
gQIgDpifuugE0WtEpkVZpior94QMVB+wcTvJV+rM+RoDjRECIGnmrlmqUqUoTONS
E5MxwiB+dFuWi1jSCROjfnJd1reBAiAU3jju3d1oCvpRCWUVC73LHo32tp+Awy7A
mUjwe2egNQ==
-----END PRIVATE KEY-----
"""


@functools.cache
def rsa_pem(bits: int = 2048, which: int = 0) -> bytes:
    """An unencrypted PKCS#8 PEM RSA key of `bits`; `which` tells apart keys of one size."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def txt_record(pem: bytes) -> bytes:
    """The selector's TXT record for the key in `pem`: v=DKIM1; k=rsa; p=<public key>."""
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)
