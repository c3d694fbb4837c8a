"""What each `waflow` command's `--help` shows after its options: the shape of its input
(JSON fields, CSV columns) and an example. Kept apart from the parser so the examples read
as a page; `document()` attaches them, and the test of the CLI checks every command has one.
"""

from __future__ import annotations

import argparse

ORG = "3f1c…-organisation-uuid"
CAMPAIGN = "9b2e…-campaign-uuid"

TEMPLATE_JSON = """\
input (JSON file, or - for stdin):
  organisation_id  uuid, required
  name             required; with language, the template's name at Meta
  language         default "en"
  category         marketing | utility | authentication (default marketing)
  message_type     text | image | video | document (default text)
  body             the text, with {{1}}-style placeholders
  parameters       list of {"type": header|body|button,
                            "valueType": text|image|video|document,
                            "source": contact.<field> | attributes.<key> | asset.<type>
                                      | literal:<text>}
"""

CAMPAIGN_JSON = """\
input (JSON file, or - for stdin):
  organisation_id  uuid, required
  name             required
  message_type     template | text | image | video | document | audio, required
  template_id      required for template (a template of the same organisation)
  message_content  required for text
  media_caption    for media messages
  recurrence       once | daily | weekly | monthly (default once)
  start_at, end_at ISO 8601 times (default: now, no end)
  phone_number_id  optional: which of the organisation's numbers sends
"""

CONTACTS_CSV = """\
input (CSV with a header line):
  phone      required (or msisdn); E.164, with or without +
  name       optional
  opted_out  optional: true opts the contact out of campaigns; empty leaves consent as is
  any other column becomes an attribute (attributes.<column> in templates and generators)
A file with any bad row is refused whole, one error per bad line.
"""

AUDIENCE_CSV = """\
input (CSV with a header line):
  phone      required (or msisdn); E.164, with or without +
  name       optional
  any other column becomes the member's attribute
"""

EXAMPLES: dict[str, str] = {
    "": "example:\n  waflow dev                 # the whole stack on this machine\n"
    "  waflow campaigns --help    # operate campaigns",
    "migrate": "no input.\nexample:\n  DATABASE_URL=postgresql://… waflow migrate",
    "dev": "no input; ports from HOST, DAGSTER_PORT, WEBHOOK_PORT.\nexample:\n  waflow dev",
    "load-demo": "no input.\nexample:\n  waflow load-demo",
    "demo": "no input; prints a JSON summary last.\nexample:\n  waflow demo",
    "archive": "example:\n  waflow archive restore --from 2026-01-01 --to 2026-01-31",
    "archive restore": "input: a date range, both ends included (UTC days).\n"
    "example:\n  waflow archive restore --from 2026-01-01 --to 2026-01-31",
    "archive setup": "no input; uses S3_BUCKET.\nexample:\n  waflow archive setup",
    "campaigns": "example:\n  waflow campaigns create campaign.json\n"
    "  waflow campaigns upload-audience CAMPAIGN_ID audience.csv",
    "campaigns create-organisation": "example:\n"
    "  waflow campaigns create-organisation --name Shop --phone-number-id 106540352242922",
    "campaigns templates": f"example:\n  waflow campaigns templates --organisation {ORG}",
    "campaigns create-template": TEMPLATE_JSON
    + "example (template.json):\n"
    + '  {"organisation_id": "'
    + ORG
    + '", "name": "spring_offer",\n'
    + '   "message_type": "image", "body": "Hi {{1}}, your offer is ready",\n'
    + '   "parameters": [{"type": "header", "valueType": "image", "source": "asset.image"},\n'
    + '                  {"type": "body", "valueType": "text", "source": "contact.name"}]}\n'
    + "  waflow campaigns create-template template.json",
    "campaigns update-template": "input (JSON file): any of body, parameters, status, category,"
    " message_type (shapes as in create-template).\n"
    'example:\n  echo \'{"body": "Hello {{1}}"}\' | waflow campaigns update-template 7 -',
    "campaigns create": CAMPAIGN_JSON
    + "example (campaign.json):\n"
    + '  {"organisation_id": "'
    + ORG
    + '", "name": "Spring offer",\n'
    + '   "message_type": "template", "template_id": 7, "recurrence": "once"}\n'
    + "  waflow campaigns create campaign.json",
    "campaigns upload-contacts": CONTACTS_CSV + "example (contacts.csv):\n"
    "  phone,name,opted_out,city\n  +16505551234,Ana,,Lisbon\n  +16505550000,Bo,true,Porto\n"
    f"  waflow campaigns upload-contacts {ORG} contacts.csv",
    "campaigns upload-audience": AUDIENCE_CSV + "example (audience.csv):\n"
    "  phone,name,city\n  +16505551234,Ana,Lisbon\n"
    f"  waflow campaigns upload-audience {CAMPAIGN} audience.csv",
    "campaigns approve": f"input: a draft campaign's id.\nexample:\n"
    f"  waflow campaigns approve {CAMPAIGN}",
    "campaigns readiness": f"example:\n  waflow campaigns readiness {CAMPAIGN}",
    "campaigns status": f"example:\n  waflow campaigns status {CAMPAIGN}",
    "campaigns process": f"example:\n  waflow campaigns process {CAMPAIGN}",
    "campaigns audience": "input: --status is a member status (pending, asset_generated,"
    " ready_to_send, failed, skipped, …).\n"
    f"example:\n  waflow campaigns audience {CAMPAIGN} --status failed --limit 50",
    "campaigns sqs-status": "no input.\nexample:\n  waflow campaigns sqs-status",
    "campaigns organisations": "example:\n"
    "  waflow campaigns organisations --phone-number-id 106540352242922",
    "campaigns update-organisation": "input: --messaging-limit is one of WhatsApp's tiers or"
    " unlimited; --display-phone PHONE_NUMBER_ID=NUMBER.\n"
    f"example:\n  waflow campaigns update-organisation {ORG} --messaging-limit 2000"
    " --by ana --reason 'tier 2 granted'",
    "campaigns account-events": f"example:\n"
    f"  waflow campaigns account-events {ORG} --kind messaging_limit",
    "campaigns refresh-numbers": f"example:\n  waflow campaigns refresh-numbers --organisation {ORG}",
    "campaigns contacts": f"example:\n  waflow campaigns contacts {ORG} --phone +16505551234",
    "campaigns consent": "input: --scope campaigns|marketing, --opted-out true|false,"
    " --by and --reason (both required).\n"
    f"example:\n  waflow campaigns consent {ORG} 42 --scope campaigns --opted-out true"
    " --by ana --reason 'asked by phone'",
    "campaigns pause": f"example:\n  waflow campaigns pause {CAMPAIGN} --by ana",
    "campaigns resume": f"example:\n  waflow campaigns resume {CAMPAIGN} --by ana",
    "campaigns cancel": f"example:\n"
    f"  waflow campaigns cancel {CAMPAIGN} --by ana --reason 'wrong audience'",
    "campaigns retry-failed": f"example:\n  waflow campaigns retry-failed {CAMPAIGN} --run 3",
    "campaigns breakers": "example:\n  waflow campaigns breakers --include-closed 10",
    "campaigns reset-breaker": "example:\n"
    "  waflow campaigns reset-breaker 5 --by ana --reason 'template re-approved'",
    "templates": "example:\n  waflow templates sync",
    "templates sync": f"example:\n  waflow templates sync --organisation {ORG}",
    "tokens": f"example:\n  waflow tokens create {ORG} --name 'marketing team'",
    "tokens create": f"example:\n  waflow tokens create {ORG} --name 'marketing team' --by ana",
    "tokens list": f"example:\n  waflow tokens list {ORG}",
    "tokens revoke": f"example:\n  waflow tokens revoke {ORG} 3 --by ana",
    "webhook": "example:\n  waflow webhook redrive --since 2026-03-01",
    "webhook redrive": "input: ISO dates or times, UTC.\n"
    "example:\n  waflow webhook redrive --since 2026-03-01T08:00 --until 2026-03-01T12:00",
    "sender": "no input; reads the queue (SQS_QUEUE_URL).\nexample:\n  waflow sender --drain",
    "webhook-worker": "no input.\nexample:\n  waflow webhook-worker",
    "webhook-app": "example:\n  waflow webhook-app --host 0.0.0.0 --port 8000"
    " --forwarded-allow-ips 10.0.0.5",
    "sender-stuck": "example:\n  waflow sender-stuck --older-than 600",
}


def commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command of the tree, by its path ("" for waflow itself, "campaigns create")."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, f"{path} {name}".strip())
    return found


def document(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Attach each command's input shape and example, shown as written."""
    for path, command in commands(parser).items():
        if path in EXAMPLES:
            command.epilog = EXAMPLES[path]
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
