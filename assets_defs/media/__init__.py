"""Personalised media: the `campaign_media` asset, its check, and the sensors that start and
recover it (seed 1 as software-defined assets)."""

import dagster as dg

from assets_defs.media.asset import campaign_media
from assets_defs.media.sensors import campaign_media_sensor, media_recovery_sensor

defs = dg.Definitions(
    assets=[campaign_media],
    sensors=[campaign_media_sensor, media_recovery_sensor],
)
