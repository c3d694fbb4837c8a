"""Personalised media: the `campaign_media` asset, its check, its start (which the campaign
sensor calls) and its recovery sensor (seed 1 as software-defined assets)."""

import dagster as dg

from assets_defs.media.asset import campaign_media
from assets_defs.media.sensors import media_recovery_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[campaign_media], sensors=[media_recovery_sensor])
