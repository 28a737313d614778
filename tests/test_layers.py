"""The layers run one way: an import only ever points down.

    flux (the project: settings, urls, ASGI, middleware, converters)
      ├── delivery, history   (consumers of the log: projections, metrics, time travel)
      │     └── boards        (the present: boards, columns, cards, members)
      │           └── activity (the log: event catalogue, record(), chain, actor)

Every import counts, at module level or inside a function, TYPE_CHECKING included: an import
that runs upwards is a dependency whichever line it sits on.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each app may import, besides itself (third-party code is not checked).
ALLOWED: dict[str, set[str]] = {
    "activity": set(),
    "boards": {"activity"},
    "history": {"activity", "boards"},
    "delivery": {"activity", "boards"},
    "flux": {"activity", "boards", "history", "delivery"},
}
APPS = set(ALLOWED)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of a project package in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return [(line, package) for line, package in found if package in APPS]


def wrong_way_imports(app: str) -> list[str]:
    wrong = []
    for path in sorted((ROOT / app).rglob("*.py")):
        for line, package in imports_of(path):
            if package != app and package not in ALLOWED[app]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {package}")
    return wrong


@pytest.mark.parametrize("app", sorted(ALLOWED))
def test_imports_only_point_down(app):
    assert wrong_way_imports(app) == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an upward import inside a function is found."""
    package = tmp_path / "activity"
    package.mkdir()
    (package / "sneaky.py").write_text("def f():\n    from boards.models import Card\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert wrong_way_imports("activity") == ["activity/sneaky.py:2 imports boards"]


def test_every_app_is_placed_in_a_layer():
    """A new top-level Django app must say where it sits before it can import anything."""
    apps = {path.parent.name for path in ROOT.glob("*/apps.py")}
    assert apps <= APPS
