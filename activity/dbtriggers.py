"""Database triggers that make `activity_event` append-only, and stamp its transaction id;
keep the chain heads moving forward, snapshots written once and the legacy seal as sealed.

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
# written once. An event is taken only as its board's newest link: its seq and hash must be
# the board's chain head, which activity.chain.chain_append moves on in the statement just
# before the insert (same transaction, the head's row locked), so a row written past the
# application (no seq, or a seq the head is not at) is refused at the INSERT. (A superuser
# can still drop or bypass these; activity.chain then catches the edit.)
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

CREATE OR REPLACE FUNCTION activity_event_refuse_unchained() RETURNS trigger AS $$
BEGIN
    IF NEW.seq IS NULL OR NEW.hash IS NULL OR NOT EXISTS (
        SELECT 1 FROM activity_chainhead AS h
        WHERE h.board_id = NEW.board_id AND h.seq = NEW.seq AND encode(h.head, 'hex') = NEW.hash
    ) THEN
        RAISE EXCEPTION
            'activity_event is append-only and chained: INSERT off the chain (board %, seq %)',
            NEW.board_id, NEW.seq USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS activity_event_chained ON activity_event;
CREATE TRIGGER activity_event_chained
    BEFORE INSERT ON activity_event
    FOR EACH ROW EXECUTE FUNCTION activity_event_refuse_unchained();
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
    # Not on a REPLACE (activity_event_no_replace names that); the head's hex is lower case.
    "DROP TRIGGER IF EXISTS activity_event_chained",
    """CREATE TRIGGER activity_event_chained BEFORE INSERT ON activity_event
       WHEN NOT EXISTS (SELECT 1 FROM activity_event WHERE id = NEW.id) AND (
           NEW.seq IS NULL OR NEW.hash IS NULL OR NOT EXISTS (
               SELECT 1 FROM activity_chainhead AS h
               WHERE h.board_id = NEW.board_id AND h.seq = NEW.seq
                 AND lower(hex(h.head)) = NEW.hash))
       BEGIN SELECT RAISE(ABORT, 'activity_event is append-only and chained: INSERT off the chain refused'); END""",  # noqa: E501
    "DROP TRIGGER IF EXISTS activity_snapshot_no_replace",
    """CREATE TRIGGER activity_snapshot_no_replace BEFORE INSERT ON activity_boardsnapshot
       WHEN EXISTS (SELECT 1 FROM activity_boardsnapshot WHERE id = NEW.id)
       BEGIN SELECT RAISE(ABORT, 'activity_boardsnapshot is append-only: REPLACE refused'); END""",
]

# The legacy seal (activity.models.LegacySeal) is written once, by migration 0010, before
# these exist; from then on it is what tells a sealed legacy event from a forged seq-less row,
# so nobody may add to it, change it or remove from it: a row inserted into it would seal a
# forgery. (A superuser can still bypass this; the seal then no longer matches the log.)
POSTGRES_SEAL = """
CREATE OR REPLACE FUNCTION activity_legacyseal_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'activity_legacyseal is sealed: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS activity_legacyseal_sealed ON activity_legacyseal;
CREATE TRIGGER activity_legacyseal_sealed
    BEFORE INSERT OR UPDATE OR DELETE ON activity_legacyseal
    FOR EACH ROW EXECUTE FUNCTION activity_legacyseal_refuse_change();

DROP TRIGGER IF EXISTS activity_legacyseal_no_truncate ON activity_legacyseal;
CREATE TRIGGER activity_legacyseal_no_truncate
    BEFORE TRUNCATE ON activity_legacyseal
    FOR EACH STATEMENT EXECUTE FUNCTION activity_legacyseal_refuse_change();
"""

POSTGRES_SEAL_DROP = (
    "DROP TRIGGER IF EXISTS activity_legacyseal_sealed ON activity_legacyseal;"
    "DROP TRIGGER IF EXISTS activity_legacyseal_no_truncate ON activity_legacyseal;"
)

# An INSERT OR REPLACE is an INSERT first: the insert trigger refuses it too.
SQLITE_SEAL = [
    "DROP TRIGGER IF EXISTS activity_legacyseal_no_insert",
    """CREATE TRIGGER activity_legacyseal_no_insert BEFORE INSERT ON activity_legacyseal
       BEGIN SELECT RAISE(ABORT, 'activity_legacyseal is sealed: INSERT refused'); END""",
    "DROP TRIGGER IF EXISTS activity_legacyseal_no_update",
    """CREATE TRIGGER activity_legacyseal_no_update BEFORE UPDATE ON activity_legacyseal
       BEGIN SELECT RAISE(ABORT, 'activity_legacyseal is sealed: UPDATE refused'); END""",
    "DROP TRIGGER IF EXISTS activity_legacyseal_no_delete",
    """CREATE TRIGGER activity_legacyseal_no_delete BEFORE DELETE ON activity_legacyseal
       BEGIN SELECT RAISE(ABORT, 'activity_legacyseal is sealed: DELETE refused'); END""",
]

# Every trigger, for whoever must drop and re-create them all (the test suite's flush).
SQLITE = [*SQLITE_EVENT, *SQLITE_CHAIN, *SQLITE_SEAL]


def _chain_tables_exist(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    """Migrations before 0006 install the event triggers only: the other tables come later."""
    tables = set(schema_editor.connection.introspection.table_names())
    return {"activity_chainhead", "activity_boardsnapshot"} <= tables


def _seal_exists(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    """The seal's table comes with migration 0010, which writes the seal before installing."""
    return "activity_legacyseal" in schema_editor.connection.introspection.table_names()


def install(apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Create (or re-create) the triggers for the current database engine."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # Straight to the cursor: the PL/pgSQL body's "%" is not a query placeholder.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES)
            if _chain_tables_exist(schema_editor):
                cursor.execute(POSTGRES_CHAIN)
            if _seal_exists(schema_editor):
                cursor.execute(POSTGRES_SEAL)
    elif vendor == "sqlite":
        chain = SQLITE_CHAIN if _chain_tables_exist(schema_editor) else []
        seal = SQLITE_SEAL if _seal_exists(schema_editor) else []
        for statement in [*SQLITE_EVENT, *chain, *seal]:
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
                "DROP TRIGGER IF EXISTS activity_event_chained ON activity_event;"
            )
        if _seal_exists(schema_editor):
            schema_editor.execute(POSTGRES_SEAL_DROP)
    elif vendor == "sqlite":
        for statement in SQLITE:
            if statement.startswith("DROP"):
                schema_editor.execute(statement)


def seal_uninstall(apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Drop the seal's triggers only (migration 0011 backwards)."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_SEAL_DROP)
    elif vendor == "sqlite":
        for statement in SQLITE_SEAL:
            if statement.startswith("DROP"):
                schema_editor.execute(statement)
