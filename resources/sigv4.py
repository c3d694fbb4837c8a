"""AWS Signature Version 4 for the requests signed here rather than by botocore: the SQS
client's calls (`resources.sqs_client`) and presigned S3 URLs (`resources.storage`).

Each signature is botocore's (the tests compare them); what is saved is botocore's work
around it, and the signing key: four HMACs derived once per secret and scope (day, region,
service), not for every request.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP = "%Y%m%dT%H%M%SZ"


def scope(amz_date: str, region: str, service: str) -> str:
    """The credential scope of a request signed at `amz_date` (`TIMESTAMP`'s form)."""
    return f"{amz_date[:8]}/{region}/{service}/aws4_request"


def signature(secret: str, amz_date: str, scope: str, canonical_request: str) -> str:
    """The hex signature of `canonical_request`, made at `amz_date` in `scope`."""
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
    return hmac.new(_signing_key(secret, scope), to_sign.encode(), hashlib.sha256).hexdigest()


@lru_cache(maxsize=16)
def _signing_key(secret: str, scope: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):  # day, region, service, "aws4_request"
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
