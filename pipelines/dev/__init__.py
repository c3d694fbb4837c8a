"""The development side of the entry points, apart from the production ones: the local stack
(embedded PostgreSQL, the local S3/SQS server and moto's patches), the supervisor that runs
the stack's processes for `waflow dev`, and the demo.

The production commands that also run on a laptop (`migrate`, `archive`, `campaigns`, …)
enter the local stack, which in production starts nothing; the stand-ins themselves are the
`local` extra, imported only when started.
"""
