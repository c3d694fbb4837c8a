"""The asset graph the Dagster UI draws: the flow's edges with their partition mappings, a
named group, a description, kinds and owners on every asset, the tables the archives drain
as observed external assets, and the sensors and jobs still aimed at the assets they ran."""

from datetime import datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive.tables import table_observation_sensor
from pipelines.definitions import defs as load_defs
from tests.archive_data import day_ago, insert_messages, midnight, organisation

defs = load_defs()

GROUPS = {
    "whatsapp_templates": "whatsapp",
    "campaign_media": "media",
    "dispatched_batches": "dispatch",
    "campaign_delivery_report": "reports",
    "messages": "tables",
    "media": "tables",
    "message_archive": "archive",
    "media_archive": "archive",
}
EXTERNAL = {"messages", "media"}


def specs() -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_the_flow_reads_media_to_dispatch_to_report_and_tables_to_archives():
    deps = {
        key: {dep.asset_key.to_user_string(): dep.partition_mapping for dep in spec.deps}
        for key, spec in specs().items()
    }
    assert {key: set(upstream) for key, upstream in deps.items()} == {
        "whatsapp_templates": set(),
        "campaign_media": set(),
        "dispatched_batches": {"campaign_media", "whatsapp_templates"},
        "campaign_delivery_report": {"dispatched_batches"},
        "messages": set(),
        "media": set(),
        "message_archive": {"messages"},
        "media_archive": {"media"},
    }
    # A campaign run (campaign × date) is made from its campaign's media, and reported on
    # under the same campaign × date.
    assert deps["dispatched_batches"]["campaign_media"] == (
        dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="campaign")
    )
    assert deps["campaign_delivery_report"]["dispatched_batches"] == dg.IdentityPartitionMapping()


def test_every_asset_has_a_named_group_a_description_kinds_and_a_team():
    found = specs()
    assert {key: spec.group_name for key, spec in found.items()} == GROUPS
    for key, spec in found.items():
        assert spec.description and spec.description.strip(), key
        assert spec.kinds, key
        assert spec.owners and all(owner.startswith("team:") for owner in spec.owners), key
    checked = {
        key.asset_key.to_user_string() for key in defs.resolve_asset_graph().asset_check_keys
    }
    assert checked <= set(GROUPS) - EXTERNAL


def test_the_tables_are_external_assets_observed_by_a_sensor(engine, postgres):
    for key in EXTERNAL:
        table = defs.resolve_assets_def(key)
        assert not table.is_executable and not table.is_materializable, key
    org = organisation(engine)
    insert_messages(engine, org, day_ago(95), 3)
    insert_messages(engine, org, day_ago(2), 2)
    with engine.begin() as conn:
        for age, status in ((50, "archived"), (40, "pending"), (1, "stored")):
            conn.execute(
                sa.text(
                    "INSERT INTO media (organisation_id, media_type, source_url, status, created_at)"
                    " VALUES (:o, 'image', 'http://x/y.jpg', :s, :c)"
                ),
                {"o": org, "s": status, "c": midnight(day_ago(age)) + timedelta(hours=5)},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE messages, media"))

    with dg.build_sensor_context(resources={"postgres": postgres}) as context:
        result = table_observation_sensor(context)

    assert not result.run_requests
    seen = {
        event.asset_key.to_user_string(): {k: v.value for k, v in event.metadata.items()}
        for event in result.asset_events
    }
    assert all(isinstance(e, dg.AssetObservation) for e in result.asset_events)
    assert seen["messages"]["rows_estimate"] == 5
    assert seen["messages"]["archive_after_days"] == 90
    assert oldest(seen["messages"]) == midnight(day_ago(95))
    assert 95 <= seen["messages"]["oldest_waiting_age_days"] < 96
    # The archived media row is not waiting: the oldest one is the pending row of 40 days.
    assert seen["media"]["rows_estimate"] == 3
    assert seen["media"]["archive_after_days"] == 30
    assert oldest(seen["media"]) == midnight(day_ago(40)) + timedelta(hours=5)
    assert 39 < seen["media"]["oldest_waiting_age_days"] < 41


def oldest(metadata: dict) -> datetime:
    return datetime.fromisoformat(metadata["oldest_waiting_row"])


def test_an_empty_table_is_observed_as_having_nothing_waiting(postgres):
    with dg.build_sensor_context(resources={"postgres": postgres}) as context:
        result = table_observation_sensor(context)
    for event in result.asset_events:
        assert event.metadata["oldest_waiting_row"].value == "none"
        assert "oldest_waiting_age_days" not in event.metadata


def test_sensors_and_jobs_launch_the_same_assets_as_before_the_deps():
    """The deps are drawn, not run: each sensor and job selects exactly what it did, and no
    asset has an automation condition that would start it when an upstream changes."""
    graph = defs.resolve_asset_graph()
    targets = {
        sensor.name: sorted(key.to_user_string() for key in sensor.asset_selection.resolve(graph))
        if sensor.asset_selection is not None
        else None
        for sensor in defs.sensors
    }
    assert targets == {
        "campaign_sensor": ["campaign_media", "dispatched_batches"],
        "media_recovery_sensor": ["campaign_media"],
        "campaign_delivery_report_sensor": ["campaign_delivery_report"],
        "table_observation_sensor": None,
    }
    jobs = {
        name: sorted(
            key.to_user_string()
            for key in defs.resolve_job_def(name).asset_layer.selected_asset_keys
        )
        for name in (
            "message_archive_job",
            "media_archive_job",
            "whatsapp_templates_job",
            "restore_messages_job",
            "webhook_retention_job",
        )
    }
    assert jobs == {
        "message_archive_job": ["message_archive"],
        "media_archive_job": ["media_archive"],
        "whatsapp_templates_job": ["whatsapp_templates"],
        "restore_messages_job": [],
        "webhook_retention_job": [],
    }
    assert {schedule.name: schedule.job_name for schedule in defs.schedules} == {
        "message_archive_schedule": "message_archive_job",
        "media_archive_schedule": "media_archive_job",
        "whatsapp_templates_schedule": "whatsapp_templates_job",
        "webhook_retention_schedule": "webhook_retention_job",
    }
    assert all(spec.automation_condition is None for spec in defs.resolve_all_asset_specs())
