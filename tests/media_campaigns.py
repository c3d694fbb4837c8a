"""Campaigns with generators, for the media tests and benchmark."""

from __future__ import annotations

import textwrap
from uuid import UUID

import dagster as dg
import sqlalchemy as sa

from assets_defs.media import campaign_media
from resources import campaigns
from resources.storage import S3Storage

# Writes its version and the member's code; fails for members whose attributes say so.
VERSIONED = """
import json, os
VERSION = {version}
def generate_asset(attributes, name, msisdn, temp_dir):
    if attributes.get("fail"):
        raise RuntimeError("cannot render " + msisdn)
    path = os.path.join(temp_dir, "card.json")
    with open(path, "w") as f:
        json.dump({{"version": VERSION, "code": attributes.get("code")}}, f)
    return {{"json": path}}
"""


def versioned(version: int) -> str:
    return VERSIONED.format(version=version)


def member(i: int, **attributes: object) -> campaigns.Member:
    """The `i`th member of a campaign made here: its number, name and attributes."""
    return campaigns.Member(
        f"+1202555{i:04d}", f"Customer {i}", {"code": f"C{i:04d}", "fail": False, **attributes}
    )


def create_campaign(
    engine: sa.Engine,
    members: int,
    source: str | None,
    *,
    attributes: dict | None = None,
    failing: int = 0,
    approve: bool = True,
) -> tuple[UUID, int]:
    """An approved campaign whose template has `source` as its active generator (if any)."""
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Media test")
        template = campaigns.create_template(conn, org, "offer", message_type="image")
        if source is not None:
            campaigns.add_generator(conn, template, "gen.py", textwrap.dedent(source))
        campaign = campaigns.create_campaign(
            conn, org, "Offer", message_type="template", template_id=template
        )
        campaigns.add_audience(
            conn,
            campaign,
            [member(i, fail=i < failing, **(attributes or {})) for i in range(members)],
        )
        if approve:
            campaigns.set_campaign_status(conn, campaign, "approved")
    return campaign, template


def materialize(instance: dg.DagsterInstance, campaign_id: UUID, postgres, s3):
    """Materialise the campaign's partition with the test's database and bucket."""
    instance.add_dynamic_partitions("campaigns", [str(campaign_id)])
    # Built anew: Dagster rebuilds a resource from its constructor arguments, which a
    # `model_copy` (the s3 fixture's bucket) does not change.
    bucket = S3Storage(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region_name=s3.region_name)
    return dg.materialize(
        [campaign_media],
        partition_key=str(campaign_id),
        resources={"postgres": postgres, "s3": bucket},
        instance=instance,
    )


def members(engine: sa.Engine, campaign_id: UUID) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id, msisdn, status, generated_asset_urls, generator_version, attempts,"
                    " last_error, status_changed_at FROM campaign_audience"
                    " WHERE campaign_id = :c ORDER BY msisdn"
                ),
                {"c": campaign_id},
            )
        )


def campaign_row(engine: sa.Engine, campaign_id: UUID) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT status, status_reason, asset_generation_status, asset_failure_ratio,"
                " asset_generation_started_at, asset_generation_completed_at"
                " FROM campaigns WHERE id = :c"
            ),
            {"c": campaign_id},
        ).one()
