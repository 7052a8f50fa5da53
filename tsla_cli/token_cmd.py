"""`tsla token create|revoke|list`: manage API tokens in the service's database.

Uses the same settings as the server (TSLA_DATABASE_URL, or the SQLite file under --home).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Create, revoke and list API tokens.")
HomeOption = Annotated[Optional[Path], typer.Option(help="state folder of an embedded server (TSLA_HOME)")]


def database_url(home: Path | None) -> str:
    """The service's database (a home's SQLite file, else the TSLA_* settings'), migrated."""
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.settings import Settings, get_settings

    settings = Settings(home=home.resolve()) if home is not None else get_settings()
    url = settings.resolved_database_url
    upgrade_to_head(url)
    return url


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a unique name, e.g. the user's")],
    operator: Annotated[
        bool, typer.Option("--operator", help="may also read the service-wide Prometheus /metrics")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Create a token and print it (it is shown only this once)."""
    from tsla_service.db import session_scope
    from tsla_service.tokens import create_token

    with session_scope(database_url(home)) as session:
        try:
            _row, plaintext = create_token(session, name, role="operator" if operator else "user")
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
    typer.echo(plaintext)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="the token's name or id")], home: HomeOption = None
) -> None:
    """Revoke a token: it stops working at once; its jobs stay."""
    from tsla_service.db import session_scope
    from tsla_service.tokens import revoke_token

    with session_scope(database_url(home)) as session:
        try:
            revoke_token(session, name)
        except LookupError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"revoked {name}")


@app.command("list")
def list_command(home: HomeOption = None) -> None:
    """Token names, ids and whether each is active."""
    from tsla_service.db import session_scope
    from tsla_service.tokens import list_tokens

    with session_scope(database_url(home)) as session:
        for row in list_tokens(session):
            state = "revoked" if row.revoked_at else "active"
            typer.echo(f"{row.name}\t{row.id}\t{row.role}\t{state}\t{row.created_at:%Y-%m-%d %H:%M}")
