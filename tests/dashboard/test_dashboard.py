"""The web dashboard in a real browser: Debian's headless Chromium driven by Playwright.

An embedded stack (`python -m tsla_cli serve`, its own home and port) trains the main TSLA digits
job over HTTP; the browser then opens `/`, pastes the token into the form, finds the job in the
table, opens its page and checks the live charts (4 epochs, the switch line at epoch 2), the
checkpoint list and a download, with no console error or warning and no failed request on the way.
Screenshots land in test-artifacts/.

Tooling as scripts/test.sh installs it: the Debian package `chromium` and the `playwright` wheel
from PyPI (the dev extra). Playwright's own browser download (`playwright install`) is never used.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard._browser import ARTIFACTS, UI_TIMEOUT_MS, VIEWPORT, PageProblems
from tests.integration._support import (
    FINISHED,
    MAIN_EPOCHS,
    MAIN_SPEC,
    MAIN_SWITCH,
    Service,
    embedded_stack,
    wait_for,
)

pytestmark = pytest.mark.integration

# A job long enough to be watched live and canceled (digits trains about two epochs a second here).
LONG_SPEC: dict[str, Any] = {
    "preset": "digits",
    "epochs": 300,
    "smoothing": {"method": "tsla", "switch_epoch": 150},
    "checkpoint": {"every": 50},
}
# Every chart and the metric series it draws (their legend labels).
CHART_SERIES = {
    "loss": ["train loss", "test loss"],
    "accuracy": ["test top-1", "test top-5", "train top-1"],
    "lr": ["learning rate"],
    "gradvar": ["gradient variance"],
}
# The metric each series plots, as the API names it.
SERIES_METRIC = {
    "train loss": "train/loss",
    "test loss": "test/loss",
    "test top-1": "test/top1",
    "test top-5": "test/top5",
    "train top-1": "train/top1",
    "learning rate": "train/lr",
    "gradient variance": "train/grad_var",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # A short lease: the worker sees a cancel within lease/3 = 5 s (as in the PostgreSQL tests).
    with embedded_stack(tmp_path_factory.mktemp("dashboard"), TSLA_LEASE_SECONDS="15") as service:
        yield service


def plotted(page: Any, canvas_id: str) -> list[dict[str, Any]]:
    """What a Chart.js canvas draws, read from `Chart.getChart(canvas).data`: per dataset its
    label, role and group (experiment charts) and the points as [x, y]."""
    datasets: list[dict[str, Any]] = page.evaluate(
        """(id) => Chart.getChart(document.getElementById(id)).data.datasets.map((d) => ({
            label: d.label, role: d.tslaRole || null, group: d.tslaGroup || null,
            data: d.data.map((p) => [p.x, p.y]),
        }))""",
        canvas_id,
    )
    return datasets


def metric_series(service: Service, job_id: str) -> dict[str, list[list[float]]]:
    """Every metric of the job from GET /jobs/{id}/metrics as [epoch, value] by epoch (newest row wins)."""
    by_metric: dict[str, dict[int, float]] = {}
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = service.http.get(f"/jobs/{job_id}/metrics", params=params).json()
        for row in sorted(page["items"], key=lambda item: item["seq"]):
            by_metric.setdefault(f"{row['split']}/{row['name']}", {})[row["epoch"]] = row["value"]
        if not page["has_more"]:
            break
        params["after"] = page["next_after"]
    return {key: [[epoch, values[epoch]] for epoch in sorted(values)] for key, values in by_metric.items()}


def assert_job_charts_match_the_api(page: Any, service: Service, job_id: str) -> None:
    """Each series plots exactly the API's values of its own metric (a swapped series fails)."""
    series = metric_series(service, job_id)
    for key, labels in CHART_SERIES.items():
        datasets = {d["label"]: d["data"] for d in plotted(page, f"chart-{key}")}
        assert sorted(datasets) == sorted(labels), (key, datasets)
        for label in labels:
            expected = [point for point in series[SERIES_METRIC[label]] if key != "gradvar" or point[1] > 0]
            assert_points(datasets[label], expected, (key, label))


def assert_points(actual: list[list[float]], expected: list[list[float]], what: Any) -> None:
    assert [x for x, _ in actual] == [x for x, _ in expected], what
    assert [y for _, y in actual] == pytest.approx([y for _, y in expected], rel=1e-9, abs=1e-12), what


def chart_summary(page: Any) -> dict[str, Any]:
    summary: dict[str, Any] = page.evaluate("() => window.tslaDashboard.summary()")
    return summary


def test_dashboard_shows_a_tsla_job(stack: Service, browser: Any) -> None:
    job = stack.submit(dict(MAIN_SPEC, name="dashboard-tsla-digits"))
    job_id = job["id"]
    final = stack.wait_job(job_id, timeout=300)
    assert final["state"] == "succeeded", final
    listing = stack.http.get(f"/jobs/{job_id}/checkpoints").json()
    assert listing["items"], listing
    ARTIFACTS.mkdir(exist_ok=True)

    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    problems = PageProblems()
    problems.watch(page)

    # No token yet: the page and its assets load without one and ask for it.
    page.goto(f"{stack.base_url}/")
    form = page.locator("#token-view")
    form.wait_for(state="visible")
    assert "Paste your API token" in form.inner_text()
    page.fill("#token-input", stack.token)
    page.click("#token-save")

    # The jobs table lists the job as succeeded, with its progress and best top-1.
    row = page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    row.wait_for(state="visible")
    assert row.get_attribute("data-state") == "succeeded"
    assert row.locator(".badge").inner_text() == "succeeded"
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == "dashboard-tsla-digits"
    assert cells[1] == job_id[:8]
    assert cells[3:5] == ["tsla", "digits"]
    assert cells[5] == f"{MAIN_EPOCHS}/{MAIN_EPOCHS}"
    assert cells[6] == f"{final['best_top1']:.2f}%"
    assert page.evaluate("() => localStorage.getItem('tsla.token')") == stack.token
    page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)

    # The job page: header, charts from the metrics cursor and the event stream, checkpoints, spec.
    row.locator("td").nth(2).click()
    page.wait_for_url(re.compile(rf"#/jobs/{job_id}$"))
    page.wait_for_selector("#job-view[data-stream-ended='true']")
    page.wait_for_function(
        """([series, epochs]) => {
            const charts = window.tslaDashboard.summary().charts;
            return Object.entries(series).every(([key, labels]) => charts[key] &&
                labels.every((label) => charts[key].points[label] === epochs) && charts[key].switchLine);
        }""",
        arg=[CHART_SERIES, MAIN_EPOCHS],
    )
    assert page.inner_text("#job-name") == "dashboard-tsla-digits"
    assert page.inner_text("#job-state") == "succeeded"
    assert page.locator("#job-cancel").is_hidden()
    assert page.locator("#job-live").is_hidden()
    assert page.locator("#job-error").is_hidden()
    facts = page.inner_text("#job-facts")
    assert f"epoch {MAIN_SWITCH}" in facts and f"{MAIN_EPOCHS} / {MAIN_EPOCHS}" in facts

    assert_job_charts_match_the_api(page, stack, job_id)
    summary = chart_summary(page)
    assert sorted(summary["charts"]) == sorted(CHART_SERIES)
    for key, labels in CHART_SERIES.items():
        chart = summary["charts"][key]
        assert chart["points"] == dict.fromkeys(labels, MAIN_EPOCHS), (key, chart)
        assert (chart["xMin"], chart["xMax"]) == (0, MAIN_EPOCHS - 1), (key, chart)
        assert chart["switchEpoch"] == MAIN_SWITCH, (key, chart)
        line = chart["switchLine"]
        assert line["epoch"] == MAIN_SWITCH, (key, chart)
        assert line["pixelEpoch"] == pytest.approx(MAIN_SWITCH, abs=1e-6), (key, chart)
        figure = page.locator(f'.chart-card[data-chart="{key}"]')
        assert figure.get_attribute("data-switch-epoch") == str(MAIN_SWITCH)
        assert figure.locator("canvas").bounding_box()["height"] > 100

    # Checkpoints: one row per stored checkpoint, best and latest marked; a download is the file.
    checkpoint_rows = page.locator("#checkpoints-body tr")
    assert checkpoint_rows.count() == len(listing["items"])
    assert page.locator("#checkpoints-body .tag-best").count() == 1
    assert page.locator("#checkpoints-body .tag-latest").count() == 1
    best = next(item for item in listing["items"] if item["id"] == listing["best_id"])
    best_row = page.locator(f'#checkpoints-body tr[data-checkpoint-id="{best["id"]}"]')
    assert best["name"] in best_row.inner_text()
    with page.expect_download() as download_info:
        best_row.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == f"{job_id}-{best['name']}.pt"
    downloaded = Path(download.path()).read_bytes()
    assert len(downloaded) == best["size"]
    assert hashlib.sha256(downloaded).hexdigest() == best["sha256"]

    spec = page.inner_text("#job-spec")
    assert '"switch_epoch": 2' in spec and '"method": "tsla"' in spec

    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
    problems.assert_none(page)
    context.close()


def test_dashboard_asks_again_for_a_rejected_token(stack: Service, browser: Any) -> None:
    """A token the API answers 401 to is dropped and the form says why (that 401 is expected)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.base_url}/#/")
    page.fill("#token-input", stack.token + "-wrong")
    page.click("#token-save")
    page.locator("#token-error").wait_for(state="visible")
    assert "401" in page.inner_text("#token-error")
    assert page.locator("#token-view").is_visible()
    assert page.locator("#jobs-view").is_hidden()
    assert page.evaluate("() => localStorage.getItem('tsla.token')") is None
    assert errors == []
    context.close()


def test_dashboard_follows_a_running_job_live_and_cancels_it(stack: Service, browser: Any) -> None:
    """Metrics arrive over the event stream while the page is open; the Cancel button works."""
    job = stack.submit(dict(LONG_SPEC, name="dashboard-live"))
    job_id = job["id"]
    stack.wait_job(job_id, timeout=120, until=lambda j: j["state"] == "running" and j["epochs_done"] >= 1)

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(f"localStorage.setItem('tsla.token', {stack.token!r})")
    page = context.new_page()
    problems = PageProblems()
    problems.watch(page)
    page.goto(f"{stack.base_url}/#/jobs/{job_id}")
    page.wait_for_selector("#job-view[data-metrics-loaded='true']")
    page.locator("#job-live").wait_for(state="visible")
    assert page.inner_text("#job-state") == "running"
    loaded = chart_summary(page)["charts"]["loss"]["points"]["test loss"]
    assert loaded >= 1
    # Later epochs arrive over the event stream, without a reload.
    page.wait_for_function(
        "n => window.tslaDashboard.summary().charts.loss.points['test loss'] > n", arg=loaded, timeout=120_000
    )
    for chart in chart_summary(page)["charts"].values():
        assert chart["switchLine"]["epoch"] == LONG_SPEC["smoothing"]["switch_epoch"], chart
        assert (chart["xMin"], chart["xMax"]) == (0, LONG_SPEC["epochs"] - 1), chart

    with page.expect_response(lambda response: response.url.endswith(f"/jobs/{job_id}/cancel")) as answer:
        page.click("#job-cancel")
    assert answer.value.status == 200
    assert answer.value.json()["cancel_requested"] is True
    page.wait_for_selector("#job-view[data-state='canceled']", timeout=90_000)
    page.wait_for_selector("#job-view[data-stream-ended='true']")
    assert page.inner_text("#job-state") == "canceled"
    assert page.locator("#job-cancel").is_hidden()
    assert page.locator("#job-live").is_hidden()
    final = stack.job(job_id)
    assert final["state"] == "canceled" and final["cancel_requested"], final
    # Every finished epoch reached the charts, through the cursor page or the stream.
    points = chart_summary(page)["charts"]["loss"]["points"]
    assert points == {"train loss": final["epochs_done"], "test loss": final["epochs_done"]}
    if final["error"]:  # the reason of a cancel is a note, not an error
        note = page.locator("#job-error")
        assert note.inner_text() == f"Note: {final['error']}"
        assert note.get_attribute("class") == "alert alert-info"
    page.locator("#checkpoints-body .tag-partial").wait_for(state="visible")
    problems.assert_none(page)
    context.close()


# A tiny experiment: baseline and TSLA(1) on digits, two seeds, two epochs each.
EXPERIMENT: dict[str, Any] = {
    "name": "dashboard-sweep",
    "base": {"preset": "digits", "epochs": 2, "model": {"width": 4}, "batch_size": 256},
    "grid": {"smoothing.method": ["baseline", "tsla"], "smoothing.switch_epoch": [1], "seed": [0, 1]},
    "objective": {"metric": "test/top1", "mode": "max"},
    "max_concurrent": 2,
}
EXPERIMENT_CHARTS = {"chart-exp-top1": "test/top1", "chart-exp-gradvar": "train/grad_var"}


def finished_experiment(service: Service, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    created = service.http.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    path = f"/experiments/{created.json()['id']}"

    def probe() -> dict[str, Any] | None:
        found: dict[str, Any] = service.http.get(path).json()
        return found if found["state"] in FINISHED or found.get("finished_at") else None

    return wait_for(probe, timeout, f"experiment {path} to finish", interval=1.0)


def curve_points(service: Service, experiment_id: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """GET /experiments/{id}/curves: each group's points, keyed by the group's canonical JSON."""
    answer = service.http.get(f"/experiments/{experiment_id}/curves", params={"name": name, "points": 200})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    groups = body.get("groups") or body.get("items") or []
    return {json.dumps(g["group"], sort_keys=True): g["points"] for g in groups}


def assert_experiment_charts_match_the_api(page: Any, service: Service, experiment_id: str) -> None:
    """The mean line and the ± std band of every group are the API's curve values."""
    for canvas, metric in EXPERIMENT_CHARTS.items():
        expected = curve_points(service, experiment_id, metric)
        datasets = plotted(page, canvas)
        means = {json.dumps(d["group"], sort_keys=True): d for d in datasets if d["role"] == "mean"}
        assert sorted(means) == sorted(expected), (canvas, list(means))
        positive = metric == "train/grad_var"
        for key, points in expected.items():
            keep = [p for p in points if not positive or p["mean"] > 0]
            assert_points(means[key]["data"], [[p["epoch"], p["mean"]] for p in keep], (canvas, key))
            label = means[key]["label"]
            upper = next(d for d in datasets if d["role"] == "upper" and d["label"] == f"{label} + std")
            band = [[p["epoch"], p["mean"] + (p["std"] or 0)] for p in keep]
            assert_points(upper["data"], band, (canvas, key, "upper"))


def test_dashboard_shows_an_experiment(stack: Service, browser: Any) -> None:
    experiment = finished_experiment(stack, EXPERIMENT)
    experiment_id = experiment["id"]
    api = stack.http.get(f"/experiments/{experiment_id}").json()
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(f"localStorage.setItem('tsla.token', {stack.token!r})")
    page = context.new_page()
    problems = PageProblems()
    problems.watch(page)

    page.goto(f"{stack.base_url}/#/experiments")
    row = page.locator(f'#experiments-body tr[data-experiment-id="{experiment_id}"]')
    row.wait_for(state="visible")
    assert row.locator("td").first.inner_text() == "dashboard-sweep"
    row.locator("td").nth(2).click()
    page.wait_for_url(re.compile(rf"#/experiments/{experiment_id}$"))
    page.wait_for_selector("#experiment-view[data-finished='true']")

    # The results table: one row per group, its final mean ± std, the best group marked, job links.
    rows = page.locator("#exp-table-body tr")
    assert rows.count() == len(api["table"])
    for index, expected in enumerate(api["table"]):
        shown = rows.nth(index)
        assert json.loads(shown.get_attribute("data-group")) == expected["group"]
        final = expected["final"]
        assert f"{final['mean']:.2f} ± {final['std']:.2f}" in shown.inner_text()
        assert shown.get_attribute("data-best") == str(bool(expected.get("is_best"))).lower()
        links = shown.locator("a").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
        assert links == [f"#/jobs/{job_id}" for job_id in expected["job_ids"]]
    assert page.locator("#exp-table-body tr.best-row").count() == 1
    assert page.locator("#exp-jobs-body tr").count() == len(api["jobs"])

    assert_experiment_charts_match_the_api(page, stack, experiment_id)
    lines = page.evaluate("() => Chart.getChart(document.getElementById('chart-exp-top1')).$tslaSwitchLines")
    assert [line["epoch"] for line in lines] == [1], lines  # TSLA(1)'s switch, drawn on the chart
    page.screenshot(path=str(ARTIFACTS / "dashboard-experiment.png"), full_page=True)

    # A member job's link opens its page.
    page.locator("#exp-jobs-body a").first.click()
    page.wait_for_selector("#job-view[data-stream-ended='true']")
    problems.assert_none(page)
    context.close()
