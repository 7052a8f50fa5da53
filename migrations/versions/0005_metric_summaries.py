"""metric summaries and records: per job and metric, the last/max/min values, and each new running maximum

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence
from itertools import groupby

import sqlalchemy as sa
from alembic import op

from tsla_service.summaries import Summary

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000

# The tables as this revision knows them (not the models, which later revisions may change).
metrics = sa.table(
    'metrics',
    sa.column('job_id', sa.String), sa.column('epoch', sa.Integer), sa.column('split', sa.String),
    sa.column('name', sa.String), sa.column('value', sa.Float),
)
COLUMNS = ('last_epoch', 'last_value', 'max_value', 'max_epoch', 'min_value', 'min_epoch', 'count')
summaries = sa.table('metric_summaries', *(sa.column(c) for c in ('job_id', 'split', 'name', *COLUMNS)))
records = sa.table('metric_records', *(sa.column(c) for c in ('job_id', 'split', 'name', 'epoch', 'value')))


def upgrade() -> None:
    op.create_table('metric_summaries',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('last_epoch', sa.Integer(), nullable=False),
    sa.Column('last_value', sa.Float(), nullable=True),
    sa.Column('max_value', sa.Float(), nullable=True),
    sa.Column('max_epoch', sa.Integer(), nullable=True),
    sa.Column('min_value', sa.Float(), nullable=True),
    sa.Column('min_epoch', sa.Integer(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_metric_summaries_job_id_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'split', 'name', name=op.f('pk_metric_summaries'))
    )
    op.create_table('metric_records',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_metric_records_job_id_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'split', 'name', 'epoch', name=op.f('pk_metric_records'))
    )
    op.create_index('ix_metric_records_job_id_split_name_value', 'metric_records',
                    ['job_id', 'split', 'name', 'value'], unique=False)
    backfill()


def backfill() -> None:
    """Summaries and records of the metrics already stored, so record_metrics can fold new epochs
    into them: one pass over the rows in (job, metric, epoch) order, inserted a batch at a time."""
    connection = op.get_bind()
    query = sa.select(metrics).order_by(metrics.c.job_id, metrics.c.split, metrics.c.name, metrics.c.epoch)
    # Options of this statement only (Connection.execution_options would keep them for the rest).
    rows = connection.execute(query, execution_options={'stream_results': True, 'yield_per': 10_000})
    pending: dict[str, list[dict[str, object]]] = {'metric_summaries': [], 'metric_records': []}
    for (job_id, split, name), group in groupby(rows, key=lambda row: (row.job_id, row.split, row.name)):
        key = {'job_id': job_id, 'split': split, 'name': name}
        summary = Summary.of((row.epoch, row.value) for row in group)
        pending['metric_summaries'].append({**key, **{column: getattr(summary, column) for column in COLUMNS}})
        pending['metric_records'].extend({**key, 'epoch': epoch, 'value': value} for epoch, value in summary.records)
        if len(pending['metric_summaries']) + len(pending['metric_records']) >= BATCH:
            flush(connection, pending)
    flush(connection, pending)


def flush(connection: sa.Connection, pending: dict[str, list[dict[str, object]]]) -> None:
    for table in (summaries, records):
        if pending[table.name]:
            connection.execute(table.insert(), pending[table.name])
            pending[table.name] = []


def downgrade() -> None:
    op.drop_index('ix_metric_records_job_id_split_name_value', table_name='metric_records')
    op.drop_table('metric_records')
    op.drop_table('metric_summaries')
