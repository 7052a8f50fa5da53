"""`python -m tsla_cli` is the `tsla` command."""

from tsla_cli.main import app

app()
