"""proxy.admin.ui: the usage page in a real headless Chromium, against a proxy with traffic.

The proxy runs as ``make_stack`` builds it (emulator upstream, SQLite and PostgreSQL) with
an admin token. Real google-genai calls from two teams, code execution among them, make
the traffic; the figures the page shows are checked against sums worked here from the
rows in ``usage_records`` (never through the report code the page reads). The browser is
Debian's ``/usr/bin/chromium`` (``scripts/test.sh`` installs it), driven by Playwright
without its own browser downloads. Each run saves a screenshot to ``tests/artifacts/``
(git-ignored) and prints its path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from proxy.admin import ui
from proxy.server.typedefs import budgets_key
from proxy.settings import Secret
from tests.factories import Stack, StackFactory, add_budget, gemini_error, raw, sqlite_only

TOKEN = "admin-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KINDS = ("input", "cached", "intermediate", "output", "thinking")
PRIMES = (
    "What is the sum of the first 50 prime numbers? "
    "Generate and run code for the calculation, and make sure you get all 50."
)

# scripts/test.sh installs Debian's Chromium; in CI a missing browser fails the test
# (below), it is never a reason to skip. Elsewhere, without it, the test is skipped.
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
    reason="no /usr/bin/chromium: scripts/test.sh installs it",
)


@pytest.fixture
async def admin(make_stack: StackFactory) -> Stack:
    return await make_stack(admin_token=Secret(TOKEN))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def money(value: Decimal) -> str:
    """A sum as the admin API writes money (normalised, plain)."""
    return format(value.normalize(), "f")


def sums(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(records)}
    for name in (*(f"{k}_tokens" for k in KINDS), "total_tokens"):
        out[name] = sum(r[name] for r in records)
    out["cost_usd"] = sum((r["cost_usd"] for r in records), Decimal(0))
    out["cost_intermediate_usd"] = sum((r["cost_intermediate_usd"] for r in records), Decimal(0))
    return out


async def make_traffic(stack: Stack) -> None:
    """Calls from research (alice: an interaction with code execution; carol: plain) and
    support (bob: generateContent with code execution)."""
    await stack.sdk("alice").aio.interactions.create(
        model="gemini-3.5-flash", input=PRIMES, tools=[{"type": "code_execution"}]
    )
    await stack.sdk("bob").aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Compute 2**10 with code.",
        config=types.GenerateContentConfig(
            tools=[types.Tool(code_execution=types.ToolCodeExecution())]
        ),
    )
    await stack.sdk("carol").aio.models.generate_content(
        model="gemini-2.5-flash", contents="Say hello."
    )


async def texts(page: Any, testid: str) -> list[str]:
    return [t.strip() for t in await page.get_by_test_id(testid).all_inner_texts()]


async def value(page: Any, testid: str) -> str:
    got = await page.get_by_test_id(testid).get_attribute("data-value")
    assert got is not None
    return str(got)


async def wait_ready(page: Any) -> None:
    """Until the page has drawn what it fetched (or failed to: then why)."""
    await page.wait_for_selector("body[data-state=ready], body[data-state=error]", state="attached")
    assert await page.get_attribute("body", "data-state") == "ready", await page.inner_text(
        "#status"
    )


@needs_chromium
async def test_the_page_shows_the_databases_figures(admin: Stack, browser: Any, request: Any):
    await make_traffic(admin)
    budget_id = await add_budget(admin.app, "team:research", limit_usd="0.5", mode="alert")
    await admin.app[budgets_key].refresh()
    records = await admin.records()
    assert len(records) == 3 and all(r["cost_usd"] is not None for r in records)
    users = {await admin.user_id(u): u for u in ("alice", "bob", "carol")}
    team_of = {uid: ("support" if name == "bob" else "research") for uid, name in users.items()}
    total = sums(records)
    # Code execution happened: its share is there to be seen.
    assert total["intermediate_tokens"] > 0 and total["cost_intermediate_usd"] > 0

    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # Not signed in: the login form, and a wrong token is refused.
    response = await page.goto(admin.url("/ui/"))
    assert response.status == 200
    assert await page.locator("form[action='/ui/login'] input[name=token]").count() == 1
    await page.fill("input[name=token]", TOKEN + "x")
    await page.click("button[type=submit]")
    assert "not the admin token" in await page.inner_text("main")
    assert await context.cookies() == []

    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await wait_ready(page)
    [cookie] = await context.cookies()
    assert cookie["name"] == ui.SESSION_COOKIE
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http on loopback; https would set it
    assert TOKEN not in cookie["value"]
    assert errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]  # the wrong token's answer
    errors.clear()

    # Totals, exactly as the rows add up.
    assert await value(page, "total-requests") == str(total["requests"])
    assert await value(page, "total-cost") == money(total["cost_usd"])
    assert await texts(page, "total-cost") == [money(total["cost_usd"])]
    assert await value(page, "total-tokens") == str(total["total_tokens"])
    assert await texts(page, "total-tokens") == [f"{total['total_tokens']:,}"]
    for kind in KINDS:
        assert await value(page, f"total-{kind}") == str(total[f"{kind}_tokens"]), kind

    # Per team (the default grouping), then per user.
    async def groups() -> dict[str, dict[str, str]]:
        rows = page.locator("tbody#groups tr")
        out = {}
        for i in range(await rows.count()):
            row = rows.nth(i)
            name = await row.get_by_test_id("group-name").inner_text()
            out[name] = {
                field: await row.get_by_test_id(f"group-{field}").inner_text()
                for field in ("requests", "cost", "tokens", *KINDS, "intermediate-share")
            }
        return out

    def expected(rows: list[dict[str, Any]]) -> dict[str, str]:
        s = sums(rows)
        out = {"requests": str(s["requests"]), "cost": money(s["cost_usd"])}
        out["tokens"] = f"{s['total_tokens']:,}"
        out.update({k: f"{s[f'{k}_tokens']:,}" for k in KINDS})
        share = 100 * s["cost_intermediate_usd"] / s["cost_usd"]
        out["intermediate-share"] = f"{share:.1f}%" if s["cost_usd"] else "–"
        return out

    by_team = await groups()
    assert by_team == {
        team: expected([r for r in records if team_of[r["user_id"]] == team])
        for team in ("research", "support")
    }
    # The default view (the last 7 days, by team), kept as the test's artifact.
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"ui-{request.node.callspec.id}.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"usage page screenshot: {shot}")

    await page.select_option("#group", "user")
    await wait_ready(page)
    assert await groups() == {
        name: expected([r for r in records if r["user_id"] == uid]) for uid, name in users.items()
    }

    # Both charts drew a bar per group and a stack per category.
    for chart_id, stacks in (("tokens-chart", 5), ("cost-chart", 6)):
        shape = await page.evaluate(
            "id => { const c = Chart.getChart(id); "
            "return [c.data.labels.length, c.data.datasets.length]; }",
            chart_id,
        )
        assert shape == [3, stacks], chart_id

    # The budget: research's spend today against its 0.5 USD limit.
    research = sums([r for r in records if team_of[r["user_id"]] == "research"])
    assert await texts(page, "budget-id") == [f"#{budget_id} alert"]
    assert await texts(page, "budget-spend") == [f"{money(research['cost_usd'])} USD"]
    assert await texts(page, "budget-limit") == ["0.5 USD"]
    ratio = Decimal(await value(page, "budget-ratio"))
    assert abs(ratio - research["cost_usd"] / Decimal("0.5")) < Decimal("0.000001")

    # Recent calls, newest first.
    newest = sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert await texts(page, "record-user") == [users[r["user_id"]] for r in newest]
    assert await texts(page, "record-cost") == [money(r["cost_usd"]) for r in newest]
    assert await texts(page, "record-intermediate") == [
        f"{r['intermediate_tokens']:,}" for r in newest
    ]

    # A range with no calls in it: every figure is zero.
    await page.fill("#from", "2020-01-01")
    await page.fill("#to", "2020-01-07")
    await page.click("#range button[type=submit]")
    await wait_ready(page)
    assert await value(page, "total-requests") == "0"
    assert await page.locator("tbody#groups td.empty").count() == 1
    await page.select_option("#group", "team")
    await page.fill("#from", "2020-01-01")
    await page.fill("#to", (newest[0]["created_at"]).date().isoformat())
    await page.click("#range button[type=submit]")
    await wait_ready(page)
    assert await value(page, "total-requests") == "3"

    assert errors == []

    # Signing out forgets the session: the admin API refuses the old page.
    await page.click("text=Sign out")
    assert await page.locator("input[name=token]").count() == 1
    assert await context.cookies() == []
    status = await page.evaluate("fetch('/admin/v1/records').then(r => r.status)")
    assert status == 401
    await context.close()


# ------------------------------------------------------------- the session, by HTTP


@sqlite_only
async def test_off_without_an_admin_token(stack: Stack) -> None:
    for method, path in (("GET", "/ui/"), ("POST", "/ui/login"), ("GET", "/ui/assets/app.js")):
        status, _, body = await raw(method, stack.url(path), data={"token": TOKEN})
        assert status == 404, path
        gemini_error(body, 404, "NOT_FOUND")


@sqlite_only
async def test_the_session_reads_and_never_writes(admin: Stack) -> None:
    import aiohttp

    # unsafe: the jar keeps cookies of an IP address (127.0.0.1), as a browser does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        # Before signing in: the login form, the page's script and data withheld.
        async with session.get(admin.url("/ui/")) as response:
            assert response.status == 200
            page = await response.text()
            assert 'action="/ui/login"' in page and "app.js" not in page
            assert "default-src 'none'" in response.headers["content-security-policy"]
        for path in ("/ui/assets/app.js", "/ui/assets/vendor/chart.umd.min.js"):
            async with session.get(admin.url(path)) as response:
                assert response.status == 404, path
        for path in ("/ui/assets/../ui.py", "/ui/assets/index.html", "/ui/assets/login.html"):
            async with session.get(admin.url(path)) as response:
                assert response.status == 404, path
        async with session.get(admin.url("/ui/assets/style.css")) as response:
            assert response.status == 200
        async with session.get(admin.url("/admin/v1/records")) as response:
            assert response.status == 401

        # A form posted from another site's page is refused, even with the right token.
        async with session.post(
            admin.url("/ui/login"), data={"token": TOKEN}, headers={"origin": "https://evil.test"}
        ) as response:
            assert response.status == 401
        assert len(session.cookie_jar) == 0

        # Behind a TLS-terminating proxy the page's origin is https: the same host is enough.
        async with session.post(
            admin.url("/ui/login"),
            data={"token": TOKEN},
            headers={"origin": f"https://{admin.proxy.host}:{admin.proxy.port}"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            cookie = response.headers["set-cookie"]
            assert TOKEN not in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with session.get(admin.url("/ui/assets/app.js")) as response:
            assert response.status == 200
        async with session.get(admin.url("/admin/v1/budgets/status")) as response:
            assert response.status == 200
        # A write with the session alone is refused, and nothing was made.
        async with session.post(admin.url("/admin/v1/teams"), json={"name": "x"}) as response:
            assert response.status == 401
        async with session.get(admin.url("/admin/v1/teams")) as response:
            assert "x" not in {t["name"] for t in (await response.json())["teams"]}


def test_a_session_value_is_bound_to_the_token_the_secret_and_its_expiry() -> None:
    secret, now = b"server-secret", 1_800_000_000.0
    value = ui.session_value(secret, TOKEN, now)
    assert TOKEN not in value
    assert ui.session_valid(value, secret, TOKEN, now)
    assert ui.session_valid(value, secret, TOKEN, now + ui.SESSION_SECONDS - 1)
    assert not ui.session_valid(value, secret, TOKEN, now + ui.SESSION_SECONDS)
    assert not ui.session_valid(value, secret, TOKEN + "2", now)
    assert not ui.session_valid(value, b"another-secret", TOKEN, now)
    expires, _, mac = value.partition(".")
    # A later expiry under the old HMAC is refused; so is anything malformed.
    assert not ui.session_valid(f"{int(expires) + 3600}.{mac}", secret, TOKEN, now)
    for bad in ("", ".", f"{expires}.", f".{mac}", f"-1.{mac}", TOKEN, f"{expires}.{mac}x"):
        assert not ui.session_valid(bad, secret, TOKEN, now), bad
