"""jobs.live_key: one queued or running job per request key (atomic duplicate submissions)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

LIVE = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('live_key', sa.String(length=64), nullable=True))
    # Live jobs mined before: the newest live job of each request key holds it (two live jobs with
    # one key, the race this closes, may already exist; the older runs on without a key).
    op.execute(
        "UPDATE jobs SET live_key = request_key WHERE request_key IS NOT NULL AND state IN ('queued', 'running') "
        "AND id = (SELECT MAX(other.id) FROM jobs AS other WHERE other.request_key = jobs.request_key "
        "AND other.state IN ('queued', 'running'))"
    )
    op.create_index('uq_jobs_live_key', 'jobs', ['live_key'], unique=True, sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    op.drop_index('uq_jobs_live_key', table_name='jobs')
    # recreate="never": ALTER TABLE ... DROP COLUMN, no copy of the table (see 0002).
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('live_key')
