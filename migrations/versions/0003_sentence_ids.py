"""provenance: sentences.ext_id and sentences.meta, table sentence_duplicates

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The input's id and metadata of a sentence's first occurrence (TSV/JSONL input, miner.io.records).
    with op.batch_alter_table('sentences', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ext_id', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('meta', sa.JSON(none_as_null=True), nullable=True))
    # Later lines with the text of an earlier one keep their ids and metadata here.
    op.create_table(
        'sentence_duplicates',
        sa.Column('corpus_id', sa.Integer(), nullable=False),
        sa.Column('line_no', sa.BigInteger(), nullable=False),
        sa.Column('idx', sa.Integer(), nullable=False),
        sa.Column('ext_id', sa.Text(), nullable=True),
        sa.Column('meta', sa.JSON(none_as_null=True), nullable=True),
        sa.ForeignKeyConstraint(['corpus_id'], ['corpora.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('corpus_id', 'line_no'),
    )
    op.create_index('ix_sentence_duplicates_idx', 'sentence_duplicates', ['corpus_id', 'idx'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sentence_duplicates_idx', table_name='sentence_duplicates')
    op.drop_table('sentence_duplicates')
    # recreate="never": ALTER TABLE ... DROP COLUMN, no copy of the table (see 0002).
    with op.batch_alter_table('sentences', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('meta')
        batch_op.drop_column('ext_id')
