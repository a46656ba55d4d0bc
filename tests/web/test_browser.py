"""The pages in a real browser (headless Chromium) against the app as `portraitkit serve`
runs it: sign in, pick styles, start a batch, watch it fill in, at desktop and phone sizes.

Screenshots of each page land in tests/web/screenshots/ (or $PORTRAITKIT_SCREENSHOTS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portraitkit.auth import LocalUser
from portraitkit.generators.sample import sample_portrait_png

from .browser_fixtures import *  # noqa: F403  (the fixtures)
from .browser_fixtures import LiveServer

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Three styles across two categories: Drawing (1 + 1 credits) and Graphic (2 credits).
PICKS = [("Pencil Sketch", 1), ("Charcoal", 1), ("Pop Art", 2)]
# Back to the top of the page, each category's row scrolled back to its first style.
SCROLL_BACK = """() => {
  for (const row of document.querySelectorAll(".styles")) row.scrollLeft = 0;
  window.scrollTo(0, 0);
}"""


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "me.png"
    path.write_bytes(sample_portrait_png())
    return path


@pytest.fixture
def open_page(browser: Any, live_server: LiveServer) -> Iterator[Callable[..., Any]]:
    """A page in a fresh browser context of the given viewport; console errors fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(viewport: dict[str, int]) -> Any:
        context = browser.new_context(viewport=viewport, base_url=live_server.url)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []


def sign_in(page: Any, user: LocalUser) -> None:
    page.goto("/")
    assert "/signin" in page.url
    page.get_by_role("button", name=user.email).click()
    page.wait_for_url("**/")


def wait_for_images(page: Any, selector: str) -> None:
    from playwright.sync_api import expect

    images = page.locator(selector)
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        expect(image).not_to_have_js_property("naturalWidth", 0)


def pick_styles(page: Any, photo: Path) -> None:
    from playwright.sync_api import expect

    page.goto("/new")
    page.get_by_label("Choose a photo").set_input_files(photo)
    total = 0
    for count, (name, cost) in enumerate(PICKS, start=1):
        page.get_by_label(name).check()
        total += cost
        expect(page.locator(".js-count")).to_have_text(f"{count} style{'s' if count > 1 else ''}")
        expect(page.locator(".js-total")).to_have_text(f"{total} credit{'s' if total > 1 else ''}")
    expect(page.locator(".js-remaining")).to_have_text(f"Balance 50 → {50 - total} after")


def test_a_new_batch_fills_in_live_on_the_gallery(
    open_page: Callable[..., Any],
    local_user: Callable[..., LocalUser],
    photo: Path,
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    page = open_page(DESKTOP)
    sign_in(page, local_user(50))
    pick_styles(page, photo)
    wait_for_images(page, ".style__preview")
    page.evaluate(SCROLL_BACK)
    page.screenshot(path=screenshots / "picker-desktop.png")

    page.get_by_role("button", name="Start 3 portraits").click()
    page.wait_for_url("**/?created=*")
    page.evaluate("() => { window.notReloaded = true }")
    card = page.locator(".card").first
    expect(card.locator(".js-status")).to_have_text("Queued")
    expect(card.locator(".js-count")).to_have_text("0/3 photos")

    expect(card).to_have_attribute("data-status", "completed", timeout=30_000)
    expect(card.locator(".js-count")).to_have_text("3/3 photos")
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    assert page.evaluate("() => window.notReloaded") is True
    expect(page.locator(".js-balance")).to_have_text("46")
    wait_for_images(page, ".card__cover")
    page.screenshot(path=screenshots / "gallery-desktop.png")

    card.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Batch from")
    images = page.locator(".photo__image")
    expect(images).to_have_count(3)
    wait_for_images(page, ".photo__image")
    names = page.locator(".photo__name").all_inner_texts()
    assert names == [name for name, _ in PICKS]
    expect(page.locator(".photo .js-status")).to_have_text(["Completed"] * 3)
    page.screenshot(path=screenshots / "batch-desktop.png")


def test_the_pages_fit_a_phone(
    open_page: Callable[..., Any],
    local_user: Callable[..., LocalUser],
    photo: Path,
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    page = open_page(PHONE)
    sign_in(page, local_user(50))
    pick_styles(page, photo)
    wait_for_images(page, ".style__preview")
    page.evaluate(SCROLL_BACK)
    page.screenshot(path=screenshots / "picker-phone.png")
    assert page.evaluate("() => document.documentElement.scrollWidth") == PHONE["width"]

    page.get_by_role("button", name="Start 3 portraits").click()
    page.wait_for_url("**/?created=*")
    card = page.locator(".card").first
    expect(card).to_have_attribute("data-status", "completed", timeout=30_000)
    wait_for_images(page, ".card__cover")
    page.screenshot(path=screenshots / "gallery-phone.png")
    assert page.evaluate("() => document.documentElement.scrollWidth") == PHONE["width"]

    card.get_by_role("link").click()
    wait_for_images(page, ".photo__image")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=screenshots / "batch-phone.png")
    assert page.evaluate("() => document.documentElement.scrollWidth") == PHONE["width"]


def test_the_picker_refuses_a_batch_the_balance_cannot_pay_for(
    open_page: Callable[..., Any],
    local_user: Callable[..., LocalUser],
    live_server: LiveServer,
    photo: Path,
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    page = open_page(PHONE)
    user = local_user(3)
    sign_in(page, user)
    page.goto("/new")
    page.get_by_label("Choose a photo").set_input_files(photo)
    # By keyboard: focus a style's checkbox and press Space, as a person without a mouse would.
    for name in ("Oil Painting", "Pop Art"):
        page.get_by_label(name).focus()
        page.keyboard.press("Space")
    expect(page.get_by_label("Oil Painting")).to_be_checked()
    expect(page.locator(".js-total")).to_have_text("5 credits")
    submit = page.locator(".js-submit")
    expect(submit).to_have_attribute("aria-disabled", "true")
    refusal = page.get_by_role("alert")
    expect(refusal).to_have_text(
        "Not enough credits: 5 needed, 3 left. Remove a style to continue."
    )
    page.screenshot(path=screenshots / "picker-refused-phone.png")

    submit.focus()
    page.keyboard.press("Enter")
    expect(refusal).to_be_visible()
    expect(page).to_have_url(f"{live_server.url}/new")
    with psycopg.connect(live_server.db_url) as conn:
        row = conn.execute(
            "select count(*) from public.generation_batches where user_id = %s", (user.id,)
        ).fetchone()
    assert row == (0,)

    page.get_by_label("Pop Art").focus()
    page.keyboard.press("Space")
    expect(submit).to_have_attribute("aria-disabled", "false")
    expect(refusal).to_be_hidden()
