"""Campaign runs and their dispatch to SQS: the `dispatched_batches` asset, its check and the
campaign-run sensor."""

import dagster as dg

from assets_defs.dispatch.asset import dispatched_batches
from assets_defs.dispatch.sensors import campaign_run_sensor

defs = dg.Definitions(assets=[dispatched_batches], sensors=[campaign_run_sensor])
