"""Campaign runs and their dispatch to SQS: the `dispatched_batches` asset, its check, and
the planning of each campaign run that the campaign sensor launches."""

import dagster as dg

from assets_defs.dispatch.asset import dispatched_batches


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[dispatched_batches])
