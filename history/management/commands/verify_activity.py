"""`manage.py verify_activity [--board KEY]`: the log is intact and tells the truth.

For each board: its hash chain is recomputed from the rows (an edit or deletion behind the
application's back names the first broken event), a replay of its events from zero is
compared with the boards tables (every difference is printed), and every replay snapshot is
compared with that replay; an event that does not fit its kind in the catalogue
(`activity.events`) is named, with what is wrong, and the replay stops there. Every row
outside a board's chain is named on a line of its own: a seq-less event that is not one of
the board's sealed legacy events, an id the database never gives, a gap, a seq out of order,
an event whose board does not exist. A board whose check fails unexpectedly is reported, and
the others are still checked. Exits 1 on any problem. The chain heads it prints can be kept
elsewhere, so that even a rewrite of a whole chain would show.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Exists, OuterRef

from activity.models import Event
from boards.models import Board
from history.replay import board_verify, snapshots_catch_up


class Command(BaseCommand):
    help = "Verify every board's event log: hash chain, replay against the tables, snapshots."

    def add_arguments(self, parser):
        parser.add_argument("--board", metavar="KEY", help="Only this board.")
        parser.add_argument(
            "--snapshots",
            action="store_true",
            help="Afterwards, write the replay snapshots missing on boards that verified.",
        )

    def handle(self, *args, board: str | None, snapshots: bool, **options):
        boards = Board.objects.order_by("key")
        if board:
            boards = boards.filter(key=board.upper())
            if not boards.exists():
                raise CommandError(f"No board with the key {board.upper()}.")
        failed = 0
        if not board:
            failed += self._orphans()
        for key, board_id in boards.values_list("key", "pk"):
            try:
                result = board_verify(board_id=board_id)
            except Exception as error:  # one line, and the other boards are still checked
                failed += 1
                self.stdout.write(
                    self.style.ERROR(
                        f"{key}: could not be verified: {type(error).__name__}: {error}"
                    )
                )
                continue
            if result.ok:
                self.stdout.write(
                    f"{key}: ok, {result.events} events, chain head {result.head[:16]}…"
                )
                if snapshots:
                    written = snapshots_catch_up(board_id=board_id)
                    self.stdout.write(f"{key}: {written} snapshots written")
                continue
            failed += 1
            self.stdout.write(self.style.ERROR(f"{key}: {len(result.problems)} problems"))
            for problem in result.problems:
                self.stdout.write(f"  {key} {problem}")
        if failed:
            raise CommandError(f"{failed} board(s) failed verification.", returncode=1)
        self.stdout.write(self.style.SUCCESS("The activity log verifies."))

    def _orphans(self) -> int:
        """Events naming a board that does not exist (only a write past the foreign keys):
        each named; 1 if there are any."""
        board = Board.objects.filter(pk=OuterRef("board_id"))
        orphans = Event.objects.filter(~Exists(board)).order_by("id")
        found = 0
        for event_id, board_id, seq in orphans.values_list("id", "board_id", "seq").iterator():
            found = 1
            self.stdout.write(
                f"  event #{event_id} (seq {seq}): names board {board_id}, which does not exist"
            )
        return found
