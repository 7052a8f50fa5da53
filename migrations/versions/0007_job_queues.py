"""jobs.queue: the broker queue each job is sent to; existing rows get `training`, the one queue before

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch mode: SQLite would rebuild `jobs`, and dropping the old table
    # (foreign keys on) would cascade-delete every metric, checkpoint and log row (see 0004).
    op.add_column('jobs', sa.Column('queue', sa.String(length=64), server_default='training', nullable=False))


def downgrade() -> None:
    op.drop_column('jobs', 'queue')  # plain DROP COLUMN (SQLite >= 3.35), for the same reason
