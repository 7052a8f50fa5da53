"""operator tokens, worker beats, non-finite metric values, corrupt checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:22:55.977841
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('queues', sa.JSON(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_seen_at'), ['seen_at'], unique=False)

    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=16), server_default='user', nullable=False))
        batch_op.add_column(sa.Column('last_submit_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corrupt', sa.Boolean(), server_default='0', nullable=False))

    # SQLite rebuilds the table to relax NOT NULL: keep AUTOINCREMENT, or seqs could be reused
    # after deletes and a client's cursor would skip rows.
    with op.batch_alter_table('metrics', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('nonfinite', sa.String(length=4), nullable=True))
        batch_op.alter_column('value', existing_type=sa.FLOAT(), nullable=True)


def downgrade() -> None:
    # The old schema has no way to store a non-finite value: those rows cannot go back.
    op.execute("DELETE FROM metrics WHERE value IS NULL")
    with op.batch_alter_table('metrics', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.alter_column('value', existing_type=sa.FLOAT(), nullable=False)
        batch_op.drop_column('nonfinite')

    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('corrupt')

    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('last_submit_at')
        batch_op.drop_column('role')

    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_seen_at'))

    op.drop_table('workers')
