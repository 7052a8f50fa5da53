"""`tsla`: one entry point; each subcommand lives with the part of the system it drives."""

import typer

from tsla_cli.admin_cmd import app as admin_app
from tsla_cli.dataset_cmd import app as dataset_app
from tsla_cli.demo import demo_command
from tsla_cli.experiment_cmd import app as experiment_app
from tsla_cli.jobs_cmd import COMMANDS
from tsla_cli.reproduce import reproduce_command
from tsla_cli.serve import migrate_command, serve_command
from tsla_cli.token_cmd import app as token_app
from tsla_core.cli import train_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help="TSLA training service")
app.command("train")(train_command)
app.command("serve")(serve_command)
app.command("demo")(demo_command)
app.command("migrate")(migrate_command)
app.command("reproduce")(reproduce_command)
app.add_typer(token_app, name="token")
app.add_typer(admin_app, name="admin")
app.add_typer(experiment_app, name="experiment")
app.add_typer(dataset_app, name="dataset")
for name, command in COMMANDS.items():
    app.command(name)(command)


@app.callback()
def main() -> None:
    """Train TSLA models locally or through the job service."""
