"""The Dagster UI in a real headless Chromium (Debian's, driven by Playwright): the asset graph.

The `make run` story: seed batches land, the sensors materialize the graph, the UI shows it.
"""

import os
import shutil
from pathlib import Path

import pytest
from _dagster_dev import TIMEOUT, installation, running_dagster

from pipelines.dataset import seed_landing
from pipelines.demo import asset_graph_path, follow_batch
from pipelines.jobs import FULL_PIPELINE_ASSETS

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MLEVENTS_CHROMIUM", "/usr/bin/chromium")
# Headless, and no calls home: the machine's network is closed and Chromium would retry.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASSET_NAMES = [key.to_user_string() for key in FULL_PIPELINE_ASSETS]
UI_TIMEOUT_MS = 30_000
SCREENSHOT_ENV = "MLEVENTS_SCREENSHOT"
"""Set to a path (e.g. docs/asset-graph.png) to keep the screenshot there too."""


def require_browser() -> None:
    missing = None if Path(CHROMIUM).is_file() else f"no Chromium at {CHROMIUM}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(
            f"{missing} (CI=true: `make test` installs Debian's chromium; the UI test must run)"
        )
    pytest.skip(f"{missing}; `apt-get install chromium` to run the UI test")


def test_asset_graph_page_shows_the_pipeline(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    place = installation(tmp_path, f"sqlite:///{tmp_path / 'events.db'}")
    seeded = seed_landing(place.landing)
    with running_dagster(place) as dagster:
        # Nobody launches anything: the sensors ingest the seed, retrain and refresh lineage.
        follow_batch(dagster, place.store_url, seeded[0].name, TIMEOUT)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                # Wide enough that the graph is drawn with full asset cards, not thumbnails.
                context = browser.new_context(viewport={"width": 3000, "height": 600})
                # Dismiss the one-time "join the community" dialog before it covers the graph.
                context.add_init_script(
                    "window.localStorage.setItem('communityNux', JSON.stringify('1'))"
                )
                page = context.new_page()
                # One patience for actions and assertions: `expect` has its own 5 s default,
                # which a loaded 2-core machine can spend before the graph's layout and the
                # cards' live data arrive.
                page.set_default_timeout(UI_TIMEOUT_MS)
                expect.set_options(timeout=UI_TIMEOUT_MS)
                # The page `make run` prints: every group expanded, no key pressed.
                page.goto(f"{dagster.url}{asset_graph_path()}")
                expect(page.get_by_text("Global asset lineage")).to_be_visible()
                for group in ("data", "training", "provenance"):
                    expect(page.get_by_text(group, exact=True).first).to_be_visible()
                for name in ASSET_NAMES:
                    expect(page.get_by_text(name, exact=True).first).to_be_visible()
                # Every asset card shows the materialization the sensors made.
                expect(page.get_by_text("Materialized", exact=True)).to_have_count(len(ASSET_NAMES))
                shot = tmp_path / "asset-graph.png"
                page.screenshot(path=str(shot))

                # The deployed model's lineage reads as a tree in its materialization metadata.
                page.set_viewport_size({"width": 1600, "height": 1000})
                page.goto(f"{dagster.url}/assets/deployed_model_lineage?view=events")
                expect(page.get_by_text("└── training ", exact=False).first).to_be_visible()
                expect(page.get_by_text("(trained_on)", exact=False).first).to_be_visible()
                lineage_shot = tmp_path / "lineage-metadata.png"
                page.screenshot(path=str(lineage_shot))

                # The log's health: the read models' checks, evaluated by the sensors' runs.
                page.goto(f"{dagster.url}/assets/read_models?view=checks")
                for check in ("projection_lag", "no_dead_letters"):
                    expect(page.get_by_text(check, exact=True).first).to_be_visible()
                expect(page.get_by_text("Passed", exact=False).first).to_be_visible()
                health_shot = tmp_path / "health-checks.png"
                page.screenshot(path=str(health_shot))
            except Exception:
                # What the browser showed when an expectation failed, kept in tmp_path.
                shown = [page for context in browser.contexts for page in context.pages]
                for index, page in enumerate(shown):
                    page.screenshot(path=str(tmp_path / f"failure-{index}.png"))
                raise
            finally:
                browser.close()
    assert shot.stat().st_size > 10_000 and lineage_shot.stat().st_size > 10_000
    assert health_shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        shutil.copyfile(lineage_shot, Path(os.environ[SCREENSHOT_ENV]).with_name(lineage_shot.name))
        shutil.copyfile(health_shot, Path(os.environ[SCREENSHOT_ENV]).with_name(health_shot.name))
