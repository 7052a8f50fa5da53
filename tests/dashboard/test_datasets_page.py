"""The dashboard's data set pages in Chromium, on an embedded stack (as tests/dashboard/test_dashboard.py).

Real images (scikit-learn's digits) are uploaded through the API as an .npz built to trip both
checks: one class has a fifth of the others' training images, and one training image is copied
into the test split. The browser then opens the data sets list and the upload's own page and
checks each shown value against the API's: the class table and its counts, the sample grid (the
very pixels of GET /datasets/{name}/samples.png, each row labelled by its class), the leakage
warning and the imbalance line. One class name holds HTML, which must show as text.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.dashboard._browser import ARTIFACTS, UI_TIMEOUT_MS, VIEWPORT, PageProblems
from tests.integration._support import Service, embedded_stack

pytestmark = pytest.mark.integration

HTML_CLASS = "<b>nine</b>"
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", HTML_CLASS]
TRAIN_PER_CLASS, SMALL_CLASS_TRAIN, TEST_PER_CLASS = 40, 8, 8
# samples.png draws 8x8 images 4x with a 1px margin all round: 34px a cell, 8 cells a row.
CELL = 8 * 4 + 2
PER_CLASS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with embedded_stack(tmp_path_factory.mktemp("dashboard-datasets")) as service:
        yield service


def digits_split(train_per_class: list[int], leak: bool) -> dict[str, np.ndarray]:
    """The first digits of each class for train, the next TEST_PER_CLASS for test (uint8 0..255, N x 8 x 8);
    with `leak`, the first training image is appended to test as well."""
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    train: list[int] = []
    test: list[int] = []
    for label, count in enumerate(train_per_class):
        found = np.flatnonzero(digits.target == label)
        train += list(found[:count])
        test += list(found[count : count + TEST_PER_CLASS])
    arrays = {
        "x_train": pixels[train],
        "y_train": digits.target[train].astype(np.int64),
        "x_test": pixels[test],
        "y_test": digits.target[test].astype(np.int64),
    }
    if leak:
        arrays["x_test"] = np.concatenate([arrays["x_test"], arrays["x_train"][:1]])
        arrays["y_test"] = np.concatenate([arrays["y_test"], arrays["y_train"][:1]])
    return arrays


def leaked_pairs(arrays: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """Every (first train index, test index) whose images are byte for byte the same."""
    first: dict[bytes, int] = {}
    for index, image in enumerate(arrays["x_train"]):
        first.setdefault(image.tobytes(), index)
    return [
        (first[image.tobytes()], index)
        for index, image in enumerate(arrays["x_test"])
        if image.tobytes() in first
    ]


def npz_bytes(arrays: dict[str, np.ndarray], classes: list[str]) -> bytes:
    contents: dict[str, Any] = {**arrays, "classes": np.array(classes)}
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    return buffer.getvalue()


def upload(service: Service, name: str, data: bytes) -> dict[str, Any]:
    """POST /uploads, then one PATCH with the whole body: the completed data set."""
    body = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    started = service.http.post("/uploads", json=body)
    assert started.status_code == 201, started.text
    upload_id = started.json()["upload"]["id"]
    done = service.http.patch(
        f"/uploads/{upload_id}",
        content=data,
        headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert done.status_code == 201, done.text
    assert done.json()["upload"] is None
    dataset: dict[str, Any] = done.json()["dataset"]
    return dataset


def fmt_bytes(size: int | None) -> str:
    """app.js's fmtBytes; an exact tie (34.25 KB) rounds up, as JavaScript's toFixed does."""
    if size is None:
        return "—"
    value, unit, units = Decimal(size), 0, ["B", "KB", "MB", "GB", "TB"]
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    shown = value.quantize(Decimal(1) if unit == 0 else Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"{shown} {units[unit]}"


def fmt_count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def fmt_shape(shape: list[int] | None) -> str:
    return "×".join(map(str, shape)) if shape else "—"


def list_row(item: dict[str, Any]) -> list[str]:
    """A row of the data sets table as the API's item says it should read."""
    status = "available" if item["available"] else item["problem"]
    return [
        item["name"],
        item["kind"],
        fmt_count(item["num_classes"]),
        fmt_shape(item["shape"]),
        fmt_count(item["num_train"]),
        fmt_count(item["num_test"]),
        fmt_bytes(item["bytes"]),
        status,
    ]


def shown_pixels_sha256(page: Any) -> str:
    """The sha256 of the RGBA pixels the page's sample <img> decoded (drawn onto a canvas)."""
    digest: str = page.evaluate(
        """async () => {
            const image = document.getElementById("ds-samples-img");
            const canvas = document.createElement("canvas");
            canvas.width = image.naturalWidth;
            canvas.height = image.naturalHeight;
            const context = canvas.getContext("2d");
            context.drawImage(image, 0, 0);
            const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
            const digest = await crypto.subtle.digest("SHA-256", pixels);
            return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
        }"""
    )
    return digest


def test_dashboard_shows_data_sets_and_their_findings(stack: Service, browser: Any) -> None:
    counts = [TRAIN_PER_CLASS] * 9 + [SMALL_CLASS_TRAIN]
    arrays = digits_split(counts, leak=True)
    pairs = leaked_pairs(arrays)
    assert (0, len(arrays["x_test"]) - 1) in pairs
    uploaded = upload(stack, "digits-leaky", npz_bytes(arrays, CLASSES))
    dataset = stack.http.get("/datasets/digits-leaky").json()
    assert dataset == uploaded
    # The API's view of the upload, which the page must show: what the .npz holds.
    assert dataset["classes"] == CLASSES and dataset["shape"] == [1, 8, 8]
    assert dataset["train_counts"] == counts
    assert dataset["test_counts"] == [TEST_PER_CLASS + 1] + [TEST_PER_CLASS] * 9  # train[0] leaked
    findings = dataset["findings"]
    assert findings["imbalance_ratio"] == pytest.approx(TRAIN_PER_CLASS / SMALL_CLASS_TRAIN)
    assert findings["small_classes"] == [HTML_CLASS]
    assert findings["duplicates"]["count"] == len(pairs)
    clean_arrays = digits_split([TRAIN_PER_CLASS] * 10, leak=False)
    assert leaked_pairs(clean_arrays) == []
    clean = upload(stack, "digits-clean", npz_bytes(clean_arrays, [str(i) for i in range(10)]))
    listed = stack.http.get("/datasets").json()
    ARTIFACTS.mkdir(exist_ok=True)

    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(f"localStorage.setItem('tsla.token', {stack.token!r})")
    page = context.new_page()
    problems = PageProblems()
    problems.watch(page)

    # The list: one row per data set, in the API's order, each reading as the API says.
    page.goto(f"{stack.base_url}/#/datasets")
    page.wait_for_selector("#datasets-view[data-loaded='true']")
    assert "active" in (page.get_attribute("#nav-datasets", "class") or "")
    rows = page.locator("#datasets-body tr")
    assert rows.evaluate_all("(rows) => rows.map((r) => r.dataset.datasetName)") == [
        d["name"] for d in listed
    ]
    for index, item in enumerate(listed):
        assert rows.nth(index).locator("td").all_inner_texts() == list_row(item), item["name"]
    leaky_row = page.locator('#datasets-body tr[data-dataset-name="digits-leaky"]')
    assert leaky_row.locator("td").all_inner_texts()[2:6] == ["10", "1×8×8", "368", "81"]
    links = rows.locator("a").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    assert links == ["#/datasets/digits-clean", "#/datasets/digits-leaky"]  # uploads only
    page.screenshot(path=str(ARTIFACTS / "dashboard-datasets.png"), full_page=True)

    # The upload's page: its header facts.
    leaky_row.locator("a").click()
    page.wait_for_url(re.compile(r"#/datasets/digits-leaky$"))
    page.wait_for_selector("#dataset-view[data-samples-loaded='true']")
    assert page.inner_text("#ds-name") == "digits-leaky"
    sha = page.locator('[data-fact="sha256"] dd span')
    assert sha.inner_text() == f"{dataset['sha256'][:16]}…"
    assert sha.get_attribute("title") == dataset["sha256"]
    assert page.inner_text('[data-fact="source"] dd') == f"npz, {fmt_bytes(dataset['source_bytes'])}"
    assert page.inner_text('[data-fact="bytes"] dd') == fmt_bytes(dataset["bytes"])
    assert page.inner_text('[data-fact="split"] dd') == "368 / 81"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.inner_text('[data-fact="created"] dd'))

    # The class table: the API's classes and counts in order, each bar as long as its count.
    table = page.locator("#ds-classes-body tr").evaluate_all(
        """(rows) => rows.map((row) => {
            const cells = [...row.cells].map((cell) => cell.innerText);
            const fills = [...row.querySelectorAll(".count-fill")];
            const widths = fills.map((fill) => parseFloat(fill.style.width));
            return { cells: [cells[0], cells[1], cells[3]], widths };
        })"""
    )
    expected = zip(dataset["classes"], dataset["train_counts"], dataset["test_counts"], strict=True)
    assert [row["cells"] for row in table] == [[name, str(n), str(m)] for name, n, m in expected]
    most_train, most_test = max(dataset["train_counts"]), max(dataset["test_counts"])
    for row, train, test in zip(table, dataset["train_counts"], dataset["test_counts"], strict=True):
        assert row["widths"] == pytest.approx([100 * train / most_train, 100 * test / most_test], abs=0.051)

    # The sample grid: the API's own PNG, one row of CELL pixels per class, labelled beside it.
    png = stack.http.get("/datasets/digits-leaky/samples.png", params={"per_class": PER_CLASS})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    served = Image.open(io.BytesIO(png.content))
    image = page.evaluate(
        """() => {
            const image = document.getElementById("ds-samples-img");
            return { src: image.src, width: image.naturalWidth, height: image.naturalHeight };
        }"""
    )
    assert image["src"].startswith("blob:"), image
    assert (image["width"], image["height"]) == (PER_CLASS * CELL, len(CLASSES) * CELL) == served.size
    assert shown_pixels_sha256(page) == hashlib.sha256(served.convert("RGBA").tobytes()).hexdigest()
    labels = page.locator("#ds-sample-labels li")
    assert labels.all_inner_texts() == dataset["classes"]
    box = page.locator("#ds-samples-img").bounding_box()
    assert box["height"] == image["height"]  # shown at its natural size
    row_height = box["height"] / len(CLASSES)
    for index in range(len(CLASSES)):
        label = labels.nth(index).bounding_box()
        assert label["y"] == pytest.approx(box["y"] + index * row_height, abs=0.5), index
        assert label["height"] == pytest.approx(row_height, abs=0.5), index

    # The findings: the leakage warning with the API's count and first pairs, the imbalance line.
    duplicates = findings["duplicates"]
    leakage = page.locator('[data-finding="leakage"]')
    assert leakage.get_attribute("data-count") == str(duplicates["count"])
    assert leakage.locator(".alert").get_attribute("class") == "alert alert-warning"
    examples = ", ".join(f"train #{train} = test #{test}" for train, test in duplicates["examples"][:5])
    copies = (
        "test image is a copy of a training image"
        if duplicates["count"] == 1
        else "test images are copies of training images"
    )
    assert leakage.inner_text() == f"Train/test leakage: {duplicates['count']} {copies} (e.g. {examples})."
    assert [tuple(pair) for pair in duplicates["examples"]] == pairs[:10]
    assert page.inner_text('[data-finding="imbalance"]') == (
        f"Class imbalance: the largest train class is {findings['imbalance_ratio']:.2f}× the smallest; "
        f"small classes: {HTML_CLASS}."
    )
    assert page.locator('[data-finding="none"]').count() == 0

    # The class name holding HTML is text wherever it shows: no <b> element was made of it.
    assert page.locator("#dataset-view b").count() == 0
    small_row = page.locator('#ds-classes-body tr[data-class-index="9"]')
    assert small_row.get_attribute("class") == "small-class"
    assert small_row.locator("td").first.inner_html() == "&lt;b&gt;nine&lt;/b&gt;"
    assert labels.nth(9).locator("span").inner_html() == "&lt;b&gt;nine&lt;/b&gt;"
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / "dashboard-dataset.png"), full_page=True)

    # Another upload's page: its own classes and image, and no findings.
    page.goto(f"{stack.base_url}/#/datasets/digits-clean")
    page.wait_for_selector("#dataset-view[data-samples-loaded='true']")
    assert page.inner_text("#ds-name") == "digits-clean"
    assert page.locator("#ds-sample-labels li").all_inner_texts() == clean["classes"]
    assert page.locator("#ds-classes-body tr").count() == len(clean["classes"])
    assert page.locator("#ds-findings-body li").all_inner_texts() == ["No findings."]
    assert clean["findings"]["imbalance_ratio"] == 1.0 and clean["findings"]["duplicates"]["count"] == 0
    problems.assert_none(page)
    context.close()
