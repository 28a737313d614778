"""The present state of the boards: tables and their constraints, no business logic.

Every write goes through `boards.services`; docs/architecture.md is the map.
"""

from django.conf import settings
from django.core.validators import MaxLengthValidator, RegexValidator
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual
from django.urls import reverse
from django.utils.functional import cached_property

from boards.ranking import RankField

BOARD_KEY_RE = r"^[A-Z][A-Z0-9]{1,9}$"

# The limits on what people and CI may write: the fields below, the services' checks, the
# forms, the API's schemas and the pages' inputs all take them from here.
BOARD_NAME_MAX_LENGTH = 100
BOARD_KEY_MAX_LENGTH = 10
BOARD_DESCRIPTION_MAX_LENGTH = 5000
COLUMN_NAME_MAX_LENGTH = 50
WIP_LIMIT_MAX = 10_000
LABEL_NAME_MAX_LENGTH = 50  # a release label is named by its deployment's version
TITLE_MAX_LENGTH = 200  # a card's
DESCRIPTION_MAX_LENGTH = 20_000  # a card's
COMMENT_MAX_LENGTH = 10_000
TOKEN_NAME_MAX_LENGTH = 100
USERNAME_MAX_LENGTH = 150  # django.contrib.auth's; the actor names stored beside one match it
ENVIRONMENT_MAX_LENGTH = 50  # a deployment's
DEPLOYMENT_URL_MAX_LENGTH = 500
SEARCH_MAX_LENGTH = 200  # the board's search box
MAX_ID = 2**63 - 1  # a BigAutoField's largest value
MAX_VERSION = 2**31 - 1  # Card.version's column holds no more
IDEMPOTENCY_KEY_MAX_LENGTH = 200


class Stage(models.TextChoices):
    TODO = "todo", "To Do"
    IN_PROGRESS = "in_progress", "In Progress"
    REVIEW = "review", "In Review"
    STAGING = "staging", "Staging"
    DEPLOYED = "deployed", "Deployed"


# The columns a new board starts with, in pipeline order.
DEFAULT_COLUMNS: list[tuple[str, Stage]] = [(stage.label, stage) for stage in Stage]


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    EDITOR = "editor", "Editor"
    ADMIN = "admin", "Admin"

    @property
    def level(self) -> int:
        return list(Role).index(self)


class LabelKind(models.TextChoices):
    GENERAL = "general", "General"
    RELEASE = "release", "Release"


class Board(models.Model):
    """A service (Payments, Checkout, ...) and its delivery pipeline."""

    name = models.CharField(max_length=BOARD_NAME_MAX_LENGTH)
    key = models.CharField(
        max_length=BOARD_KEY_MAX_LENGTH,
        unique=True,
        validators=[RegexValidator(BOARD_KEY_RE, "2-10 capital letters or digits, e.g. PAY.")],
        help_text="Short, permanent prefix of card refs, e.g. PAY for PAY-42.",
    )
    description = models.TextField(
        blank=True, validators=[MaxLengthValidator(BOARD_DESCRIPTION_MAX_LENGTH)]
    )
    created_at = models.DateTimeField()
    last_card_number = models.PositiveIntegerField(default=0, editable=False)

    # Not columns: read alongside a board and set on the instance by `boards.queries`
    # (absent on a board loaded any other way).
    role: Role  # board_get: the actor's role on the board, as checked
    open_by_stage: list[tuple[Stage, int]]  # board_list: its open cards per stage, in order

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(key__regex=BOARD_KEY_RE), name="board_key_format"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    @cached_property
    def cards_url(self) -> str:
        """The URL prefix of this board's cards ("/b/PAY/cards/"): one reverse per page."""
        return reverse("boards:card", args=[self.key, 0]).removesuffix("0/")


class Column(models.Model):
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="columns")
    name = models.CharField(max_length=COLUMN_NAME_MAX_LENGTH)
    position = models.PositiveSmallIntegerField()
    stage = models.CharField(max_length=20, choices=Stage.choices)
    wip_limit = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Most open cards the column should hold; empty for none."
    )
    wip_blocks = models.BooleanField(
        default=False, help_text="Refuse moves past the WIP limit instead of only warning."
    )

    class Meta:
        # No join in the default order: a FOR UPDATE on a column must lock only the column.
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["board", "name"], name="column_unique_name"),
            models.CheckConstraint(
                condition=models.Q(wip_limit__isnull=True) | models.Q(wip_limit__gt=0),
                name="column_wip_limit_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.board.key} / {self.name}"


class Label(models.Model):
    """A label on one board. Release labels name a version; boards share them by name."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(max_length=LABEL_NAME_MAX_LENGTH)
    colour = models.CharField(
        max_length=7,
        default="#64748b",
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "A colour like #1d4ed8.")],
    )
    kind = models.CharField(max_length=10, choices=LabelKind.choices, default=LabelKind.GENERAL)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["board", "name"], name="label_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.EDITOR)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "board"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.board.key}"


class Card(models.Model):
    """A work item. Archived, never deleted; its ref is `<board key>-<number>`."""

    board = models.ForeignKey(Board, on_delete=models.PROTECT, related_name="cards")
    column = models.ForeignKey(Column, on_delete=models.PROTECT, related_name="cards")
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    description = models.TextField(
        blank=True, validators=[MaxLengthValidator(DESCRIPTION_MAX_LENGTH)]
    )
    due_date = models.DateField(null=True, blank=True)
    rank = RankField()
    version = models.PositiveIntegerField(default=1)
    archived = models.BooleanField(default=False)
    labels = models.ManyToManyField(Label, blank=True, related_name="cards")
    assignees = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="assigned_cards"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    entered_column_at = models.DateTimeField(help_text="When the card came into its column.")

    # Not a column: set by `boards.queries` on the cards a board's columns show (absent on a
    # card loaded any other way).
    fragment_key: str  # the cache key of its rendered HTML

    class Meta:
        ordering = ["column_id", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["board", "number"], name="card_unique_number"),
            # Invariant 4: within a column, open cards are strictly ordered.
            models.UniqueConstraint(
                fields=["column", "rank"],
                condition=models.Q(archived=False),
                name="card_unique_rank_in_column",
            ),
            models.CheckConstraint(condition=~models.Q(title=""), name="card_title_not_empty"),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("title"), TITLE_MAX_LENGTH),
                name="card_title_length",
            ),
        ]
        indexes = [models.Index(fields=["board", "archived"], name="card_board_open")]

    def __str__(self) -> str:
        return f"{self.ref} {self.title}"

    @property
    def ref(self) -> str:
        return f"{self.board.key}-{self.number}"

    @property
    def url(self) -> str:
        return f"{self.board.cards_url}{self.number}/"

    @property
    def release_labels(self) -> list["Label"]:
        return [label for label in self.labels.all() if label.kind == LabelKind.RELEASE]


class Comment(models.Model):
    card = models.ForeignKey(Card, on_delete=models.PROTECT, related_name="comments")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=USERNAME_MAX_LENGTH)
    body = models.TextField(validators=[MaxLengthValidator(COMMENT_MAX_LENGTH)])
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Comment by {self.author_name} on {self.card_id}"


class ApiToken(models.Model):
    """A bearer token for the REST API, scoped to boards and a role; stored as a SHA-256 digest.

    The secret is 32 random bytes, so a plain SHA-256 is as strong as a slow hash would be and
    costs nothing per request; only its first characters (`prefix`) are kept to tell tokens
    apart. It is shown once, when made.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(
        max_length=TOKEN_NAME_MAX_LENGTH, help_text="Shown as the actor in the activity log."
    )
    prefix = models.CharField(max_length=12, editable=False, db_index=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    role = models.CharField(
        max_length=10,
        choices=[(Role.EDITOR.value, Role.EDITOR.label), (Role.VIEWER.value, Role.VIEWER.label)],
        default=Role.EDITOR,
        help_text="The most the token may do; never more than its user's own role.",
    )
    boards = models.ManyToManyField(
        Board, blank=True, related_name="+", help_text="Empty: every board of its user."
    )
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class IdempotencyKey(models.Model):
    """The first answer to a POST sent with an Idempotency-Key, replayed on retries."""

    scope = models.CharField(max_length=64, help_text="Digest of the token that sent it.")
    key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    status = models.PositiveSmallIntegerField(null=True)
    content_type = models.CharField(max_length=100, blank=True)
    body = models.BinaryField(default=b"")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_unique_key")
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status or 'in progress'})"
