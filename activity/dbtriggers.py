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

# The chain head only moves forward one step at a time and is never removed; snapshots are
# written once. (A superuser can still drop these; activity.chain then catches the edit.)
POSTGRES_CHAIN = """
CREATE OR REPLACE FUNCTION activity_chainhead_forward_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.board_id = OLD.board_id AND NEW.seq = OLD.seq + 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'activity_chainhead only moves forward: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION activity_snapshot_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'activity_boardsnapshot is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS activity_chainhead_forward ON activity_chainhead;
CREATE TRIGGER activity_chainhead_forward
    BEFORE UPDATE OR DELETE ON activity_chainhead
    FOR EACH ROW EXECUTE FUNCTION activity_chainhead_forward_only();

DROP TRIGGER IF EXISTS activity_chainhead_no_truncate ON activity_chainhead;
CREATE TRIGGER activity_chainhead_no_truncate
    BEFORE TRUNCATE ON activity_chainhead
    FOR EACH STATEMENT EXECUTE FUNCTION activity_chainhead_forward_only();

DROP TRIGGER IF EXISTS activity_snapshot_append_only ON activity_boardsnapshot;
CREATE TRIGGER activity_snapshot_append_only
    BEFORE UPDATE OR DELETE ON activity_boardsnapshot
    FOR EACH ROW EXECUTE FUNCTION activity_snapshot_refuse_change();

DROP TRIGGER IF EXISTS activity_snapshot_no_truncate ON activity_boardsnapshot;
CREATE TRIGGER activity_snapshot_no_truncate
    BEFORE TRUNCATE ON activity_boardsnapshot
    FOR EACH STATEMENT EXECUTE FUNCTION activity_snapshot_refuse_change();
"""

SQLITE_EVENT = [
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

SQLITE_CHAIN = [
    "DROP TRIGGER IF EXISTS activity_chainhead_forward",
    """CREATE TRIGGER activity_chainhead_forward BEFORE UPDATE ON activity_chainhead
       WHEN NEW.seq != OLD.seq + 1 OR NEW.board_id != OLD.board_id
       BEGIN SELECT RAISE(ABORT, 'activity_chainhead only moves forward: UPDATE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_chainhead_no_delete",
    """CREATE TRIGGER activity_chainhead_no_delete BEFORE DELETE ON activity_chainhead
       BEGIN SELECT RAISE(ABORT, 'activity_chainhead only moves forward: DELETE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_snapshot_no_update",
    """CREATE TRIGGER activity_snapshot_no_update BEFORE UPDATE ON activity_boardsnapshot
       BEGIN SELECT RAISE(ABORT, 'activity_boardsnapshot is append-only: UPDATE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_snapshot_no_delete",
    """CREATE TRIGGER activity_snapshot_no_delete BEFORE DELETE ON activity_boardsnapshot
       BEGIN SELECT RAISE(ABORT, 'activity_boardsnapshot is append-only: DELETE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_snapshot_no_replace",
    """CREATE TRIGGER activity_snapshot_no_replace BEFORE INSERT ON activity_boardsnapshot
       WHEN EXISTS (SELECT 1 FROM activity_boardsnapshot WHERE id = NEW.id)
       BEGIN SELECT RAISE(ABORT, 'activity_boardsnapshot is append-only: REPLACE refused'); END""",
]

# Every trigger, for whoever must drop and re-create them all (the test suite's flush).
SQLITE = [*SQLITE_EVENT, *SQLITE_CHAIN]


def _chain_tables_exist(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    """Migrations before 0006 install the event triggers only: the other tables come later."""
    tables = set(schema_editor.connection.introspection.table_names())
    return {"activity_chainhead", "activity_boardsnapshot"} <= tables


def install(apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Create (or re-create) the triggers for the current database engine."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # Straight to the cursor: the PL/pgSQL body's "%" is not a query placeholder.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES)
            if _chain_tables_exist(schema_editor):
                cursor.execute(POSTGRES_CHAIN)
    elif vendor == "sqlite":
        chain = SQLITE_CHAIN if _chain_tables_exist(schema_editor) else []
        for statement in [*SQLITE_EVENT, *chain]:
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
        if _chain_tables_exist(schema_editor):
            schema_editor.execute(
                "DROP TRIGGER IF EXISTS activity_chainhead_forward ON activity_chainhead;"
                "DROP TRIGGER IF EXISTS activity_chainhead_no_truncate ON activity_chainhead;"
                "DROP TRIGGER IF EXISTS activity_snapshot_append_only ON activity_boardsnapshot;"
                "DROP TRIGGER IF EXISTS activity_snapshot_no_truncate ON activity_boardsnapshot;"
            )
    elif vendor == "sqlite":
        for statement in SQLITE:
            if statement.startswith("DROP"):
                schema_editor.execute(statement)
