"""What the CLI and events tests share: fast digits settings and metric paging; the embedded
stack itself is `tests.integration._support.embedded_stack`."""

from __future__ import annotations

from typing import Any

from tests.integration._support import Service, embedded_stack

__all__ = ["FAST", "FAST_SET", "all_metric_rows", "embedded_stack"]

# The digits jobs here train a narrower net in bigger batches than the preset (width 16, batch 64):
# a few seconds an epoch even on a busy 2-core machine, so the folder stays within its time budget.
# Five steps an epoch (1,293 training images after the validation split): two of them probe the
# gradient variance, so that each epoch logs it.
FAST: dict[str, Any] = {"model": {"width": 4}, "batch_size": 256, "grad_variance": {"probes_per_epoch": 2}}
FAST_SET = ["--set", "model.width=4", "--set", "batch_size=256", "--set", "grad_variance.probes_per_epoch=2"]


def all_metric_rows(service: Service, job_id: str, limit: int = 10) -> list[dict[str, Any]]:
    """Every metric row of the job via GET /jobs/{id}/metrics, paged with the cursor."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = service.http.get(f"/jobs/{job_id}/metrics", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        rows.extend(page["items"])
        if not page["has_more"]:
            return rows
        params["after"] = page["next_after"]
