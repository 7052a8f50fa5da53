"""`python -m tsla_core ...` trains without the service (same as `tsla train ...`)."""

import typer

from tsla_core.cli import train_command

typer.run(train_command)
