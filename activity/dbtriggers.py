"""Database triggers that make `activity_event` append-only, and stamp its transaction id.

Kept here, not inline in one migration, because SQLite drops a table's triggers whenever a
migration rebuilds the table: a later migration that alters `activity_event` must run
`install` again (and tests/activity check the triggers exist after all migrations).
"""

from django.db.backends.base.schema import BaseDatabaseSchemaEditor

POSTGRES = """
CREATE OR REPLACE FUNCTION activity_event_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'activity_event is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION activity_event_stamp_txid() RETURNS trigger AS $$
BEGIN
    NEW.txid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS activity_event_append_only ON activity_event;
CREATE TRIGGER activity_event_append_only
    BEFORE UPDATE OR DELETE ON activity_event
    FOR EACH ROW EXECUTE FUNCTION activity_event_refuse_change();

DROP TRIGGER IF EXISTS activity_event_no_truncate ON activity_event;
CREATE TRIGGER activity_event_no_truncate
    BEFORE TRUNCATE ON activity_event
    FOR EACH STATEMENT EXECUTE FUNCTION activity_event_refuse_change();

DROP TRIGGER IF EXISTS activity_event_txid ON activity_event;
CREATE TRIGGER activity_event_txid
    BEFORE INSERT ON activity_event
    FOR EACH ROW EXECUTE FUNCTION activity_event_stamp_txid();
"""

SQLITE = [
    "DROP TRIGGER IF EXISTS activity_event_no_update",
    """CREATE TRIGGER activity_event_no_update BEFORE UPDATE ON activity_event
       BEGIN SELECT RAISE(ABORT, 'activity_event is append-only: UPDATE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_event_no_delete",
    """CREATE TRIGGER activity_event_no_delete BEFORE DELETE ON activity_event
       BEGIN SELECT RAISE(ABORT, 'activity_event is append-only: DELETE refused'); END""",
    # INSERT OR REPLACE deletes the old row without firing delete triggers: refuse it here.
    "DROP TRIGGER IF EXISTS activity_event_no_replace",
    """CREATE TRIGGER activity_event_no_replace BEFORE INSERT ON activity_event
       WHEN EXISTS (SELECT 1 FROM activity_event WHERE id = NEW.id)
       BEGIN SELECT RAISE(ABORT, 'activity_event is append-only: REPLACE refused'); END""",
]


def install(apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Create (or re-create) the triggers for the current database engine."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # Straight to the cursor: the PL/pgSQL body's "%" is not a query placeholder.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES)
    elif vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)
    else:
        raise NotImplementedError(f"No append-only triggers for {vendor}")


def uninstall(apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(
            "DROP TRIGGER IF EXISTS activity_event_append_only ON activity_event;"
            "DROP TRIGGER IF EXISTS activity_event_no_truncate ON activity_event;"
            "DROP TRIGGER IF EXISTS activity_event_txid ON activity_event;"
        )
    elif vendor == "sqlite":
        for name in ["no_update", "no_delete", "no_replace"]:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS activity_event_{name}")
