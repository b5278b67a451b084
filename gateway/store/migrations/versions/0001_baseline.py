"""The schema as gateway releases before migrations created it (``metadata.create_all``).

A database made by such a release has these tables and no ``alembic_version``: ``db upgrade``
recognises it and records this revision (or 0002, if its export jobs already have leases) without
touching its tables (gateway/store/migrations/__init__.py).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('recorded', sa.String(length=40), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('organization', sa.String(length=64), nullable=True),
    sa.Column('role', sa.String(length=32), nullable=True),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('subtype', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=2), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('entity_type', sa.String(length=64), nullable=True),
    sa.Column('entity_id', sa.String(length=64), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    op.create_index('ix_audit_client', 'audit_events', ['client_id'], unique=False)
    op.create_index('ix_audit_entity', 'audit_events', ['entity_type', 'entity_id'], unique=False)
    op.create_index('ix_audit_recorded', 'audit_events', ['recorded'], unique=False)
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('organization', sa.String(length=255), nullable=True),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=10), nullable=False),
    sa.Column('rules', sa.String(length=512), nullable=False),
    sa.Column('message_type', sa.String(length=64), nullable=True),
    sa.Column('sender', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('destination', 'res_type', 'res_id', 'version_id', name='uq_deliveries_version')
    )
    op.create_index('ix_deliveries_due', 'deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index('ix_deliveries_organization', 'deliveries', ['organization', 'res_type', 'status'], unique=False)
    op.create_index('ix_deliveries_resource', 'deliveries', ['destination', 'res_type', 'res_id', 'version_id'], unique=False)
    op.create_table('export_jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('request_url', sa.Text(), nullable=False),
    sa.Column('params', sa.LargeBinary(), nullable=False),
    sa.Column('transaction_time', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('progress', sa.String(length=255), nullable=True),
    sa.Column('output', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_export_jobs_status', 'export_jobs', ['status'], unique=False)
    op.create_table('idx_date',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.String(length=32), nullable=False),
    sa.Column('high', sa.String(length=32), nullable=False)
    )
    op.create_index('ix_idx_date_high', 'idx_date', ['res_type', 'param', 'high', 'low', 'res_id'], unique=False)
    op.create_index('ix_idx_date_lookup', 'idx_date', ['res_type', 'param', 'low', 'high', 'res_id'], unique=False)
    op.create_index('ix_idx_date_resource_param', 'idx_date', ['res_type', 'res_id', 'param', 'low', 'high'], unique=False)
    op.create_table('idx_quantity',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('unit', sa.String(length=255), nullable=True)
    )
    op.create_index('ix_idx_quantity_lookup', 'idx_quantity', ['res_type', 'param', 'value'], unique=False)
    op.create_index('ix_idx_quantity_resource_param', 'idx_quantity', ['res_type', 'res_id', 'param', 'value', 'system', 'code', 'unit'], unique=False)
    op.create_table('idx_reference',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False)
    )
    op.create_index('ix_idx_reference_lookup', 'idx_reference', ['res_type', 'param', 'target', 'res_id'], unique=False)
    op.create_index('ix_idx_reference_resource_param', 'idx_reference', ['res_type', 'res_id', 'param', 'target'], unique=False)
    op.create_table('idx_string',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.Column('exact', sa.String(length=512), nullable=True)
    )
    op.create_index('ix_idx_string_lookup', 'idx_string', ['res_type', 'param', 'value', 'res_id'], unique=False)
    op.create_index('ix_idx_string_resource_param', 'idx_string', ['res_type', 'res_id', 'param', 'value', 'exact'], unique=False)
    op.create_table('idx_token',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=False)
    )
    op.create_index('ix_idx_token_lookup', 'idx_token', ['res_type', 'param', 'code', 'system', 'res_id'], unique=False)
    op.create_index('ix_idx_token_resource_param', 'idx_token', ['res_type', 'res_id', 'param', 'system', 'code'], unique=False)
    op.create_table('message_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.String(length=40), nullable=False),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('sender_application', sa.String(length=255), nullable=True),
    sa.Column('sender_facility', sa.String(length=255), nullable=True),
    sa.Column('control_id', sa.String(length=255), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=True),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ack', sa.LargeBinary(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_message_log_control', 'message_log', ['sender_facility', 'control_id'], unique=False)
    op.create_index('ix_message_log_status', 'message_log', ['status'], unique=False)
    op.create_table('resource_versions',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.String(length=40), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('res_type', 'res_id', 'version_id')
    )
    op.create_index('ix_versions_updated', 'resource_versions', ['last_updated'], unique=False)
    op.create_table('resources',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.String(length=40), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('res_type', 'res_id')
    )
    op.create_index('ix_resources_owner', 'resources', ['owner', 'res_type'], unique=False)
    op.create_index('ix_resources_updated', 'resources', ['res_type', 'last_updated'], unique=False)
    op.create_table('used_assertions',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti')
    )
    op.create_index('ix_used_assertions_expiry', 'used_assertions', ['expires_at'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not removed by a migration: drop the database instead")
