"""The sender worker: queued payloads → WhatsApp Cloud API → message rows.

Lifecycle of a row: `pending → sending` (a compare-and-set claim; whoever loses it deletes
the payload without sending) `→ sent` with the wamid, or `failed` with the provider's code
and title. A retryable error before WhatsApp accepted the message puts the row back to
`pending` and hides the payload for an exponential backoff (at most `SENDER_MAX_ATTEMPTS`
attempts, then `failed` and the payload to the DLQ).

Crash rule: a row left in `sending` (the worker died, or the connection broke after the
request left) may or may not have reached WhatsApp. It is never re-sent automatically, so
no recipient gets the same campaign message twice; its payload is deleted when it comes
back. Such rows are surfaced instead: `waflow sender-stuck` lists those older than
`SENDER_STUCK_AFTER_SECONDS`, the `campaign_delivery_report` counts them per run, and its
`messages_stuck_in_sending` check fails while any exist. A status webhook carrying our id in
`biz_opaque_callback_data` still settles such a row if WhatsApp did accept it.
"""
