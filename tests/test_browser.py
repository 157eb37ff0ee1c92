"""The UI as a person sees it: a webserver on a small materialized instance (three customers, one
model rejected, one waiting for approval), its model, forecast, check and overview pages loaded in
headless Chromium (Debian's, driven by Playwright), the charts and each customer's status
asserted on the rendered page, and screenshots kept under ``test-artifacts/browser/``."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from forecast_assets.assets import REPORT_ASSETS
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.database import Database
from resources.storage import LocalObjectStore
from tests.conftest import _free_port, land
from tests.live_dagster import REPO_ROOT, dagster_webserver, overview_definitions

pytestmark = pytest.mark.slow

APPROVED, REJECTED, PENDING = (c.customer_id for c in DEMO_CUSTOMERS[:3])
TRAINING = "models__load_forecast_model"
CHROMIUM = "/usr/bin/chromium"
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
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
LOAD_TIMEOUT_MS = 60_000
DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


def materialized_instance(dagster_home: Path, store: LocalObjectStore) -> None:
    """Three customers through forecast_job (one model rejected, one pending), then the overview."""
    customers = [APPROVED, REJECTED, PENDING]
    land(store, customers, days=60)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("customers", customers)
        job = overview_definitions().resolve_job_def("forecast_job")
        for customer, gate in zip(
            customers, [{}, {"max_wape_ratio": 0.01}, {"auto_approve": False}], strict=True
        ):
            config = {"n_estimators": 20, "backtest_days": 14, **gate}
            result = job.execute_in_process(
                instance=instance,
                partition_key=customer,
                run_config={"ops": {TRAINING: {"config": config}}},
            )
            assert result.success, customer
        overview = dg.materialize(
            REPORT_ASSETS,
            instance=instance,
            resources={"store": store, "database": Database()},
            run_config={
                "ops": {"reports__customer_overview": {"config": {"max_data_age_hours": 1e6}}}
            },
        )
        assert overview.success


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator:
    """A Playwright page in Debian's chromium, with a user-data-dir of its own."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI (.ci/run installs it)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1100},
        )
        context.set_default_timeout(LOAD_TIMEOUT_MS)
        page = context.new_page()
        # The UI's first-visit "Join the Dagster community" dialog comes up at any moment of
        # the first page loads and covers what the test clicks: skip it whenever it shows.
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"),
            lambda: page.get_by_role("button", name="Skip").click(),
        )
        try:
            yield page
        finally:
            context.close()


def open_page(page, url: str, ready_text: str) -> None:
    """Load ``url`` and wait until ``ready_text`` is rendered."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(ready_text, exact=False).first.wait_for(state="visible")


def show_markdown(page, entry: str, ready: str | None = None):
    """Open the markdown metadata ``entry`` of the shown materialization; its dialog, once its
    markdown is rendered (``ready`` text, or an image)."""
    page.locator("tr", has_text=entry).get_by_text("Show Markdown").first.click()
    dialog = page.get_by_role("dialog").filter(has_text=entry)
    dialog.wait_for(state="visible")
    if ready is not None:
        dialog.get_by_text(ready).first.wait_for(state="visible")
    return dialog


def rendered_pngs(locator) -> list[tuple[int, int]]:
    """Natural sizes of the embedded PNGs under ``locator`` once the browser decoded them."""
    images = locator.locator("img[src^='data:image/png']")
    images.first.wait_for(state="visible")
    return [
        images.nth(i).evaluate(
            "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])"
        )
        for i in range(images.count())
    ]


def close(dialog) -> None:
    dialog.get_by_role("button", name="Close").click()
    dialog.wait_for(state="hidden")


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_model_forecast_and_overview_pages_show_charts_and_each_customers_status(
    data_home: Path, store: LocalObjectStore, tmp_path: Path, browser_page
) -> None:
    dagster_home = Path(tempfile.mkdtemp(dir=tmp_path, prefix="dagster_home"))
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    materialized_instance(dagster_home, store)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"screenshots: {ARTIFACTS}")

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    code = ["-m", "tests.live_dagster", "-a", "overview_definitions"]
    page = browser_page
    with dagster_webserver(env, tmp_path / "webserver.log", port, code):
        # The overview: every customer, what needs attention first.
        open_page(page, f"{base}/assets/reports/customer_overview?view=events", "Materialized")
        table = page.locator("table", has_text="forecast_source").first
        text = table.inner_text()
        assert text.index(REJECTED) < text.index(PENDING) < text.index(APPROVED), text
        assert "REJECTED" in text and "PENDING" in text
        screenshot(page, "overview-table")
        dialog = show_markdown(page, "overview", ready="rejected by quality gate")
        assert (
            "REJECTED" in dialog.inner_text() and "rejected by quality gate" in dialog.inner_text()
        )
        screenshot(page, "overview-markdown")
        close(dialog)

        # The rejected customer's model: its backtest as a picture, and its failed check.
        open_page(
            page,
            f"{base}/assets/models/load_forecast_model?view=partitions&partition={REJECTED}",
            "backtest_chart",
        )
        assert page.locator("tr", has_text="checks").filter(has_text="quality_gate FAILED").count()
        dialog = show_markdown(page, "backtest_chart")
        ((width, height),) = rendered_pngs(dialog)
        assert width >= 400 and height >= 150
        assert dialog.get_by_role("img", name=f"{REJECTED} backtest: forecast against actual")
        screenshot(page, "model-backtest-chart")
        close(dialog)

        # The approved customer's forecast: horizon after the last days of load, and next hours.
        open_page(
            page,
            f"{base}/assets/forecasts/load_forecast?view=partitions&partition={APPROVED}",
            "forecast_chart",
        )
        dialog = show_markdown(page, "forecast_chart")
        ((width, height),) = rendered_pngs(dialog)
        assert width >= 400 and height >= 150
        screenshot(page, "forecast-chart")
        close(dialog)
        # A short markdown entry is rendered in place.
        next_hours = page.locator("tr", has_text="next_hours").last
        next_hours.get_by_text("P90 kWh").first.wait_for(state="visible")
        hours = [line for line in next_hours.inner_text().splitlines() if line.startswith("20")]
        assert len(hours) == 12, next_hours.inner_text()
        assert page.locator("tr", has_text="checks").filter(has_text="passed").count()
        next_hours.scroll_into_view_if_needed()
        screenshot(page, "forecast-next-hours")

        # The quality gate's status per customer: red for the rejected one only.
        open_page(
            page,
            f"{base}/assets/models/load_forecast_model?view=checks&checkDetail=quality_gate",
            "quality_gate",
        )
        page.get_by_role("tab", name="Partitions").last.click()
        page.get_by_text("Failed (1)").first.wait_for(state="visible")
        page.get_by_text("Passed (2)").first.wait_for(state="visible")
        screenshot(page, "quality-gate-partitions")
        page.get_by_text(REJECTED, exact=True).filter(visible=True).last.click()
        page.get_by_text(f"customer '{REJECTED}'", exact=False).first.wait_for(state="visible")
        screenshot(page, "quality-gate-rejected-customer")

        # The lineage: the model's node counts the check as not passed (it said "1/1 Passed").
        open_page(page, f"{base}/assets/models/load_forecast_model?view=lineage", "Asset checks")
        node = page.locator("div", has_text="load_forecast_model").filter(has_text="Asset checks")
        node.get_by_text("0 / 1 Passed").first.wait_for(state="visible")
        screenshot(page, "lineage")
