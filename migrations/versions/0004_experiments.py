"""experiments, and on jobs: experiment, cell, cell key, role, send order, hold flag, provenance

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:11:07.917601
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_JOB_COLUMNS = ('cell', 'cell_key', 'role', 'position', 'held', 'provenance')


def upgrade() -> None:
    op.create_table('experiments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('base', sa.JSON(), nullable=False),
    sa.Column('grid', sa.JSON(), nullable=False),
    sa.Column('teacher', sa.JSON(), nullable=True),
    sa.Column('teacher_job_id', sa.String(length=32), nullable=True),
    sa.Column('objective_metric', sa.String(length=64), server_default='test/top1', nullable=False),
    sa.Column('objective_mode', sa.String(length=8), server_default='max', nullable=False),
    sa.Column('max_concurrent', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), server_default='3', nullable=False),
    sa.Column('order', sa.String(length=16), server_default='shuffled', nullable=False),
    sa.Column('canceled', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('collapsed', sa.JSON(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('create_response', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments')),
    sa.UniqueConstraint('owner', 'idempotency_key', name='uq_experiments_owner_idempotency_key')
    )
    op.create_index(
        'ix_experiments_owner_created', 'experiments', ['owner', 'created_at', 'id'], unique=False
    )

    # No batch mode for `jobs`: SQLite would rebuild it, and dropping the old table (foreign keys
    # on) would cascade-delete every metric, checkpoint and log row. Plain ADD COLUMN keeps them.
    if op.get_bind().dialect.name == 'sqlite':
        op.execute(
            'ALTER TABLE jobs ADD COLUMN experiment_id VARCHAR(32) '
            'CONSTRAINT fk_jobs_experiment_id_experiments REFERENCES experiments (id)'
        )
    else:
        op.add_column('jobs', sa.Column('experiment_id', sa.String(length=32), nullable=True))
        op.create_foreign_key(
            op.f('fk_jobs_experiment_id_experiments'), 'jobs', 'experiments', ['experiment_id'], ['id']
        )
    op.add_column('jobs', sa.Column('cell', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('cell_key', sa.String(length=64), nullable=True))
    op.add_column('jobs', sa.Column('role', sa.String(length=16), nullable=True))
    op.add_column('jobs', sa.Column('position', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('held', sa.Boolean(), server_default='0', nullable=False))
    op.add_column('jobs', sa.Column('provenance', sa.JSON(), nullable=True))
    op.create_index(op.f('ix_jobs_experiment_id'), 'jobs', ['experiment_id'], unique=False)
    op.create_index('uq_jobs_experiment_cell_key', 'jobs', ['experiment_id', 'cell_key'], unique=True)


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35) for the reason given in upgrade().
    op.drop_index('uq_jobs_experiment_cell_key', table_name='jobs')
    op.drop_index(op.f('ix_jobs_experiment_id'), table_name='jobs')
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_constraint(op.f('fk_jobs_experiment_id_experiments'), 'jobs', type_='foreignkey')
    for column in (*NEW_JOB_COLUMNS, 'experiment_id'):
        op.drop_column('jobs', column)

    op.drop_index('ix_experiments_owner_created', table_name='experiments')
    op.drop_table('experiments')
