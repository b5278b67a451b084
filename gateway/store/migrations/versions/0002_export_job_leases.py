"""Export jobs are owned by the process running them, which renews a lease while it works; another
process takes a job over only once the lease has run out (gateway/export/jobs.py).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("export_jobs", sa.Column("owner", sa.String(length=64), nullable=True))
    op.add_column("export_jobs", sa.Column("lease_until", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:     # SQLite drops a column by copying the table
        batch.drop_column("lease_until")
        batch.drop_column("owner")
