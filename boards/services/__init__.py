"""Every write to the boards: one transaction each, each recording exactly one event.

A service checks the actor's role first, locks what it changes (FOR NO KEY UPDATE: rows that
only point at a locked row, such as events and projections, can still be written), validates
its input and then writes; anything it refuses raises before a row is touched
(`boards.errors`, or Django's `ValidationError` for bad input). A call that changes nothing
writes nothing and no event.

One module per domain; this package is the one name every face (views, API, admin,
commands) calls them by: `services.card_move(...)`.
"""

from boards.services.boards import board_create, board_update, column_create, column_update
from boards.services.cards import (
    card_archive,
    card_assign,
    card_create,
    card_details_set,
    card_label_add,
    card_label_remove,
    card_labels_set,
    card_restore,
    card_update,
)
from boards.services.comments import comment_add
from boards.services.deployments import Commit, DeploymentResult, card_refs_in, deployment_record
from boards.services.incidents import deployment_roll_back, incident_open, incident_resolve
from boards.services.labels import label_create, label_get_or_create, label_update
from boards.services.members import membership_remove, membership_set
from boards.services.moves import MoveResult, card_move

__all__ = [
    "Commit",
    "DeploymentResult",
    "MoveResult",
    "board_create",
    "board_update",
    "card_archive",
    "card_assign",
    "card_create",
    "card_details_set",
    "card_label_add",
    "card_label_remove",
    "card_labels_set",
    "card_move",
    "card_refs_in",
    "card_restore",
    "card_update",
    "column_create",
    "column_update",
    "comment_add",
    "deployment_record",
    "deployment_roll_back",
    "incident_open",
    "incident_resolve",
    "label_create",
    "label_get_or_create",
    "label_update",
    "membership_remove",
    "membership_set",
]
