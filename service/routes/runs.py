"""Runs and ensembles under ``--runs``, training new ones as jobs, and the job queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import StateDep
from ..errors import documented
from ..schemas import TrainBody

router = APIRouter()


@router.get("/v1/runs", responses=documented())
def runs(state: StateDep) -> list[dict[str, Any]]:
    """The runs and ensembles under ``--runs``."""
    return [state.run_summary(n) for n in state.run_names()]


@router.get("/v1/runs/{name}", responses=documented(404))
def run(name: str, state: StateDep) -> dict[str, Any]:
    """One run: classes, head, its evaluation's metrics."""
    return state.run_summary(name)


@router.post("/v1/train", status_code=202, responses=documented(404, 409, 429))
def train(body: TrainBody, state: StateDep) -> dict[str, Any]:
    """Train a head on the resident store (the ``heads train`` options, and ``name``: the run's
    folder under ``--runs``). Answers 202 with a job id at once; poll ``/v1/jobs/{id}``."""
    return state.train_job(body.name, body.train_options(), overwrite=body.overwrite).to_dict()


@router.get("/v1/jobs", responses=documented())
def jobs(state: StateDep) -> list[dict[str, Any]]:
    return [j.to_dict() for j in state.jobs.list()]


@router.get("/v1/jobs/{job_id}", responses=documented(404))
def job(job_id: str, state: StateDep) -> dict[str, Any]:
    """queued / running / done / failed / cancelled, progress, and the result."""
    return state.job(job_id).to_dict()


@router.delete("/v1/jobs/{job_id}", responses=documented(404))
def cancel(job_id: str, state: StateDep) -> dict[str, Any]:
    """Cancel a job: a queued one at once, a running one at its next checkpoint."""
    return state.jobs.cancel(state.job(job_id)).to_dict()
