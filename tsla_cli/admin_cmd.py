"""`tsla admin ...`: operator commands on the service's database, for what no token may do.

A job belongs to its token alone, so when that token is revoked nobody can cancel its running job
over the API; `tsla admin cancel` does it for the operator, with the same settings as the server.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tsla_cli.token_cmd import HomeOption, database_url

app = typer.Typer(no_args_is_help=True, help="Operator commands (direct database access).")


@app.command("cancel")
def cancel(job_id: Annotated[str, typer.Argument(help="the job's id")], home: HomeOption = None) -> None:
    """Cancel any job, whoever owns it: queued ones end at once, running ones stop at their next step."""
    from tsla_service import events, jobs
    from tsla_service.db import session_scope
    from tsla_service.models import Job
    from tsla_service.settings import Settings, get_settings
    from tsla_spec.vocabulary import FINISHED_STATES

    settings = Settings(home=home.resolve()) if home is not None else get_settings()
    with session_scope(database_url(home)) as session:
        job = session.get(Job, job_id[:64])
        if job is None:
            typer.echo(f"error: no job {job_id}", err=True)
            raise typer.Exit(5)
        if job.state in FINISHED_STATES:
            typer.echo(f"error: job {job_id} is already {job.state}", err=True)
            raise typer.Exit(2)
        state = jobs.request_cancel(session, job_id)
    events.notify(settings.events_url, job_id, "state")
    typer.echo(f"{job_id}: {state}" + (" (cancel requested)" if state == "running" else ""))
