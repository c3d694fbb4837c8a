"""The schema: numbered migrations (`NNN_name.sql`), applied in order and recorded by
`resources.migrations`. A package so that they ship inside the installed project."""
