"""The bucket's lifecycle rules for the archive prefixes (Standard → IA → Glacier → Deep Archive).

Applied at start-up by the local stack and by `waflow archive setup` in production; the
rules are replaced by id and other rules of the bucket are kept, so applying them again
changes nothing.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from assets_defs.archive import media, messages
from resources.storage import S3Storage

TRANSITIONS = (
    {"Days": 30, "StorageClass": "STANDARD_IA"},
    {"Days": 90, "StorageClass": "GLACIER"},
    {"Days": 270, "StorageClass": "DEEP_ARCHIVE"},
)


def archive_rules() -> list[dict[str, Any]]:
    return [
        {
            "ID": f"waflow-{root}",
            "Filter": {"Prefix": f"{root}/"},
            "Status": "Enabled",
            "Transitions": [dict(t) for t in TRANSITIONS],
        }
        for root in (messages.ROOT, media.ROOT)
    ]


def current_rules(s3: S3Storage) -> list[dict[str, Any]]:
    try:
        return s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return []
        raise


def apply_lifecycle_rules(s3: S3Storage) -> list[dict[str, Any]]:
    """Put the archive rules next to the bucket's other rules; returns the rules now in force."""
    ours = archive_rules()
    ids = {rule["ID"] for rule in ours}
    others = [rule for rule in current_rules(s3) if rule.get("ID") not in ids]
    s3.client.put_bucket_lifecycle_configuration(
        Bucket=s3.bucket, LifecycleConfiguration={"Rules": others + ours}
    )
    return others + ours
