"""GET /experiments/{id}/table.csv and /curves: owner isolation, parameters, the CSV's rows and
the curves' striding, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.api.conftest import Api
from tsla_service.db import session_scope
from tsla_service.models import Experiment, Job
from tsla_service.results import record_metrics
from tsla_service.tokens import create_token
from tsla_spec.records import MetricRow

EPOCHS = 10


@pytest.fixture(scope="module")
def world(backend_api: Api) -> dict[str, Any]:
    """An experiment of two groups (baseline, lsr) x two seeds, 10 epochs of test/top1, owned by
    one token; another token that must not see it."""
    api = backend_api
    with session_scope(api.database_url) as session:
        owner, token = create_token(session, "experimenter")
        _, other = create_token(session, "someone-else")
        experiment = Experiment(
            owner=owner.id, name="sweep", base={}, grid={}, max_concurrent=2, collapsed=[]
        )
        session.add(experiment)
        session.flush()
        for position, (method, seed) in enumerate((m, s) for m in ("baseline", "lsr") for s in (0, 1)):
            job = Job(
                name="j", owner=owner.id, state="succeeded", spec={}, method=method, dataset="digits",
                epochs=EPOCHS, experiment_id=experiment.id, cell={"smoothing.method": method, "seed": seed},
                cell_key=f"k{position}", role="cell", position=position,
            )  # fmt: skip
            session.add(job)
            session.flush()
            for epoch in range(EPOCHS):
                value = 50.0 + epoch + seed + (5 if method == "lsr" else 0)
                record_metrics(session, job.id, 1, [MetricRow(epoch, "test", "top1", value, "smooth", epoch)])
        experiment_id = experiment.id
    return {"api": api, "owner": api.as_token(token), "other": api.as_token(other), "id": experiment_id}


def get(world: dict[str, Any], path: str, who: str = "owner", **params: Any) -> Any:
    return world["api"].client.get(f"/experiments/{world['id']}{path}", params=params, headers=world[who])


@pytest.mark.parametrize("path", ["/table.csv", "/curves"])
def test_another_tokens_experiment_is_a_404(world: dict[str, Any], path: str) -> None:
    assert get(world, path, who="other").status_code == 404
    missing = world["api"].client.get(f"/experiments/{'0' * 32}{path}", headers=world["owner"])
    assert missing.status_code == 404
    assert world["api"].client.get(f"/experiments/{world['id']}{path}").status_code == 401


def test_the_csv_has_one_row_per_group(world: dict[str, Any]) -> None:
    response = get(world, "/table.csv", target=0.55)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["smoothing.method"] for row in rows] == ["baseline", "lsr"]
    baseline, lsr = rows
    assert (baseline["final_mean"], baseline["final_n"], lsr["final_mean"]) == ("59.5", "2", "64.5")
    # 55%: epochs 5 and 4 (0-based) of the baseline seeds, 0 of both lsr seeds
    assert (baseline["epochs_to_target_mean"], baseline["reached"], lsr["epochs_to_target_mean"]) == (
        "5.5",
        "2",
        "1.0",
    )
    assert lsr["is_best"] == "true" and float(lsr["p_value"]) < 0.05 and baseline["p_value"] == ""
    assert {"project_version", "torch_version", "device", "dataset_name", "dataset_hash"} <= set(baseline)


@pytest.mark.parametrize(("points", "epochs"), [(4, [0, 3, 6, 9]), (1, [9]), (1000, list(range(EPOCHS)))])
def test_curves_are_strided_to_at_most_points_epochs(
    world: dict[str, Any], points: int, epochs: list[int]
) -> None:
    response = get(world, "/curves", name="test/top1", points=points)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "test/top1" and [g["group"] for g in body["groups"]] == [
        {"smoothing.method": "baseline"}, {"smoothing.method": "lsr"},
    ]  # fmt: skip
    baseline = body["groups"][0]
    assert [point["epoch"] for point in baseline["points"]] == epochs
    first = baseline["points"][0]
    assert (first["mean"], first["n"]) == (50.5 + epochs[0], 2)
    assert first["std"] == pytest.approx(0.5**0.5)


def test_a_metric_nobody_logged_has_empty_curves(world: dict[str, Any]) -> None:
    body = get(world, "/curves", name="val/top1").json()
    assert [group["points"] for group in body["groups"]] == [[], []]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/curves", {"points": 0}),
        ("/curves", {"points": 1001}),
        ("/curves", {"points": "٣"}),
        ("/curves", {"name": "top1"}),
        ("/curves", {"name": "test/top1;drop"}),
        ("/table.csv", {"target": 0}),
        ("/table.csv", {"target": 1.5}),
        ("/table.csv", {"target": "nan"}),
        ("/table.csv", {"early_epochs": 0}),
        ("/table.csv", {"unknown": 1}),
    ],
)
def test_bad_parameters_are_a_422(world: dict[str, Any], path: str, params: dict[str, Any]) -> None:
    assert get(world, path, **params).status_code == 422
