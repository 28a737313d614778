"""`manage.py createtoken --user NAME [--board KEY ...] [--role editor|viewer] [--name NAME]`."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from activity.log import Actor
from activity.models import Source
from boards.errors import FluxError, refusal_message
from boards.models import Role
from boards.tokens import token_create


class Command(BaseCommand):
    help = "Make an API token for a user and print it once; only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="Username the token acts as.")
        parser.add_argument(
            "--board", action="append", default=[], help="Limit to this board key (repeatable)."
        )
        parser.add_argument("--role", choices=[Role.EDITOR, Role.VIEWER], default=Role.EDITOR)
        parser.add_argument("--name", help="Shown as the actor in the log (default: user-ci).")

    def handle(self, *args, user, board, role, name, **options):
        account = get_user_model().objects.filter(username=user, is_active=True).first()
        if account is None:
            raise CommandError(f"No active user {user!r}.")
        try:
            token, secret = token_create(
                actor=Actor(user=account, source=Source.SYSTEM),
                user=account,
                name=name or f"{user}-ci",
                role=role,
                board_keys=board,
            )
        except (ValidationError, FluxError) as error:
            raise CommandError(refusal_message(error)) from None
        scope = ", ".join(board) if board else "all of the user's boards"
        self.stderr.write(f"Token {token.name!r} ({role}, {scope}); it is shown only now:")
        self.stdout.write(secret)
