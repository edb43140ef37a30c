"""automatic threshold: jobs.threshold_info, candidates.probability

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The cut a finished job uses: {"value", "method", "reason", ...evidence} (miner.core.autocut.Decision).
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('threshold_info', sa.JSON(), nullable=True))
    # Estimated probability that a candidate is a translation (auto jobs only).
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('probability', sa.Float(), nullable=True))


def downgrade() -> None:
    # recreate="never": a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35). Batch mode's copy-and-
    # rename would drop the jobs table, and on SQLite with foreign keys on, dropping a table deletes
    # its rows first, cascading to every job's candidates, steps and stages.
    with op.batch_alter_table('candidates', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('probability')
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('threshold_info')
