"""Real Chromium against Flux served by uvicorn: one browser for these tests, one context each.

Each page records what the browser complains about (console errors, uncaught exceptions,
Content Security Policy violations) so a test can assert the pages it visited were clean. When
a test fails, a full-page screenshot lands in `test-artifacts/<test name>.png`.

The servers run with DEBUG=0 and the manifest static storage: run `manage.py collectstatic`
first (`make test` does). They need PostgreSQL and Redis, so these tests do too.

The browser is Debian's Chromium at /usr/bin/chromium (or wherever CHROMIUM says), driven by
Playwright; `make test` installs it when it is missing. A run that selects these tests without
it stops before the first test, with one line saying how to get it.
"""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from activity.log import Actor
from boards import services
from boards.models import Role
from tests.conftest import make_card, make_user

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Reports each CSP violation to Python; it runs before any of the page's own scripts.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.fluxReportCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} ` +
    `at ${event.sourceFile || document.location.href}:${event.lineNumber}`
  );
});
"""

phase_report = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """No Chromium: stop the run at once with how to get it, not fail each browser test."""
    if os.access(CHROMIUM, os.X_OK) or session.config.option.collectonly:
        return
    if any("browser" in getattr(item, "fixturenames", ()) for item in session.items):
        pytest.exit(
            f"The end-to-end tests need Chromium at {CHROMIUM}: `make test` installs it (as "
            "root, with apt-get); else `sudo apt-get install -y chromium`, or set CHROMIUM to "
            "a Chromium binary, or leave these tests out with -m 'not e2e'.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    item.stash.setdefault(phase_report, {})[report.when] = report
    return report


@dataclass
class BrowserLog:
    """What the browser complained about while a test ran."""

    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, page url)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def on_page_error(self, error: Exception) -> None:
        self.page_errors.append(str(error))

    def on_csp_violation(self, description: str) -> None:
        self.csp_violations.append(description)

    def problems(self, *, expected_status: dict[str, int] | None = None) -> list[str]:
        """Every complaint, but for Chromium's note on a page served with an expected status.

        (For a document answered with 404, Chromium logs "Failed to load resource: the server
        responded with a status of 404 (Not Found)"; that is the page doing its job.)
        """
        expected = expected_status or {}
        console = [
            f"console: {text} ({url})"
            for text, url in self.console_errors
            if not any(
                url.endswith(path) and f"status of {status} " in text
                for path, status in expected.items()
            )
        ]
        page = [f"uncaught: {error}" for error in self.page_errors]
        return console + page + [f"CSP: {violation}" for violation in self.csp_violations]


@pytest.fixture(autouse=True)
def _committed_data(transactional_db) -> None:
    """The server processes see only committed rows, so these tests really commit."""


@pytest.fixture(scope="package", autouse=True)
def _orm_beside_playwright() -> Iterator[None]:
    """Let these tests use the ORM while Playwright's event loop runs in their thread.

    Playwright's sync API keeps an asyncio event loop running in the test thread while the
    browser is open, so Django takes the tests' own ORM calls (making users, boards, cards;
    pytest-django's flush) for calls from async code and refuses them. They are ordinary
    synchronous calls on the test's thread, so allowing them is safe.

    It is set for this package only, not at import time: collection imports this file for
    every run, and the variable would leak into the rest of the session, where the
    `manage.py check --deploy` subprocesses of tests/test_project.py rightly refuse it
    (async.E001).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="package")
def browser(_orm_beside_playwright) -> Iterator[Browser]:
    """Chromium for this package's tests; closing it after them stops Playwright's loop."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture
def page(request, browser: Browser, app_server, browser_log: BrowserLog) -> Iterator[Page]:
    """A fresh browser context on the live server; screenshotted if the test fails."""
    context = browser.new_context(base_url=app_server.url)
    context.set_default_timeout(10_000)
    context.expose_function("fluxReportCspViolation", browser_log.on_csp_violation)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.on("console", browser_log.on_console)
    page.on("pageerror", browser_log.on_page_error)
    yield page
    reports = request.node.stash.get(phase_report, {})
    if any(report.failed for report in reports.values()):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    context.close()


@pytest.fixture
def open_page(request, browser: Browser, browser_log: BrowserLog) -> Iterator:
    """More browser contexts, each on a server of its own choosing, watched like `page`."""
    contexts = []

    def opener(server) -> Page:
        context = browser.new_context(base_url=server.url)
        context.set_default_timeout(10_000)
        context.expose_function("fluxReportCspViolation", browser_log.on_csp_violation)
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        contexts.append(context)
        extra = context.new_page()
        extra.on("console", browser_log.on_console)
        extra.on("pageerror", browser_log.on_page_error)
        return extra

    yield opener
    reports = request.node.stash.get(phase_report, {})
    for number, context in enumerate(contexts):
        if any(report.failed for report in reports.values()):
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}-{number}.png"
            context.pages[0].screenshot(path=shot, full_page=True)
        context.close()


@pytest.fixture
def payments(transactional_db):
    """PAY, made by alice through the services, with bob as an editor and one card."""
    alice, bob = make_user("alice"), make_user("bob")
    board = services.board_create(actor=Actor(user=alice), name="Payments", key="PAY")
    services.membership_set(
        actor=Actor(user=alice), board_id=board.pk, user_id=bob.pk, role=Role.EDITOR
    )
    make_card(board, title="Retry failed payouts")
    return board


def log_in(page: Page, username: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("pw-" + username)
    page.get_by_role("button", name="Log in").click()
