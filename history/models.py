"""Replay accelerators: snapshots of a board's replayed state (`history.replay`)."""

from django.db import models

from activity.models import AppendOnlyError


class BoardSnapshotQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Snapshots are append-only; they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Snapshots are append-only; they cannot be deleted.")


class BoardSnapshot(models.Model):
    """A board's replayed state after its event `seq`: an accelerator for history.replay,
    never the source of truth (replay from zero gives the same state), written once."""

    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    format = models.PositiveSmallIntegerField(help_text="history.replay.FORMAT when written.")
    seq = models.BigIntegerField(help_text="The state after the board's event of this seq.")
    event_hash = models.CharField(max_length=64, help_text="That event's chain hash.")
    occurred_max = models.DateTimeField(help_text="The latest occurred_at of events covered.")
    state = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BoardSnapshotQuerySet.as_manager()

    class Meta:
        db_table = "activity_boardsnapshot"
        constraints = [
            models.UniqueConstraint(fields=["board", "format", "seq"], name="board_snapshot_once")
        ]

    def __str__(self) -> str:
        return f"snapshot of board {self.board_id} at {self.seq}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Snapshots are append-only; they cannot be updated.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Snapshots are append-only; they cannot be deleted.")
