"""The search index tables get a key, (res_type, res_id, param, seq), and lose their per-resource
index: on SQLite they become WITHOUT ROWID tables, whose rows live in the key's B-tree, so each
index row is kept twice (table, lookup index) instead of three times (gateway/store/schema.py).
Existing rows are copied, numbered within their resource.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEY = ["res_type", "res_id", "param"]

# each table's value columns and its lookup indexes, as 0001 made them (the per-resource index goes)
_TABLES = {
    "idx_token": ([sa.Column("system", sa.String(length=255), nullable=True),
                   sa.Column("code", sa.String(length=255), nullable=False)],
                  {"ix_idx_token_lookup": ["res_type", "param", "code", "system", "res_id"]}),
    "idx_string": ([sa.Column("value", sa.String(length=512), nullable=False),
                    sa.Column("exact", sa.String(length=512), nullable=True)],
                   {"ix_idx_string_lookup": ["res_type", "param", "value", "res_id"]}),
    "idx_date": ([sa.Column("low", sa.String(length=32), nullable=False),
                  sa.Column("high", sa.String(length=32), nullable=False)],
                 {"ix_idx_date_lookup": ["res_type", "param", "low", "high", "res_id"],
                  "ix_idx_date_high": ["res_type", "param", "high", "low", "res_id"]}),
    "idx_reference": ([sa.Column("target", sa.String(length=255), nullable=False)],
                      {"ix_idx_reference_lookup": ["res_type", "param", "target", "res_id"]}),
    "idx_quantity": ([sa.Column("value", sa.Float(), nullable=False),
                      sa.Column("system", sa.String(length=255), nullable=True),
                      sa.Column("code", sa.String(length=255), nullable=True),
                      sa.Column("unit", sa.String(length=255), nullable=True)],
                     {"ix_idx_quantity_lookup": ["res_type", "param", "value"]}),
}


def upgrade() -> None:
    for name, (value_columns, lookups) in _TABLES.items():
        values = [c.name for c in value_columns]
        for index in [*lookups, f"ix_{name}_resource_param"]:
            op.drop_index(index, table_name=name)
        op.rename_table(name, f"{name}_0003")
        op.create_table(
            name,
            sa.Column("res_type", sa.String(length=64), nullable=False),
            sa.Column("res_id", sa.String(length=64), nullable=False),
            sa.Column("param", sa.String(length=64), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            *[sa.Column(c.name, c.type, nullable=c.nullable) for c in value_columns],
            sa.PrimaryKeyConstraint("res_type", "res_id", "param", "seq", name=f"pk_{name}"),
            sqlite_with_rowid=False,
        )
        columns = ", ".join([*_KEY, *values])
        op.execute(
            f"INSERT INTO {name} ({columns}, seq) SELECT {columns}, "
            f"row_number() OVER (PARTITION BY res_type, res_id ORDER BY {', '.join(['param', *values])}) - 1 "
            f"FROM {name}_0003")
        op.drop_table(f"{name}_0003")
        for index, index_columns in lookups.items():
            op.create_index(index, name, index_columns, unique=False)


def downgrade() -> None:
    for name, (value_columns, lookups) in _TABLES.items():
        values = [c.name for c in value_columns]
        for index in lookups:
            op.drop_index(index, table_name=name)
        op.rename_table(name, f"{name}_0004")
        op.create_table(
            name,
            sa.Column("res_type", sa.String(length=64), nullable=False),
            sa.Column("res_id", sa.String(length=64), nullable=False),
            sa.Column("param", sa.String(length=64), nullable=False),
            *[sa.Column(c.name, c.type, nullable=c.nullable) for c in value_columns],
        )
        columns = ", ".join([*_KEY, *values])
        op.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {name}_0004")
        op.drop_table(f"{name}_0004")
        for index, index_columns in lookups.items():
            op.create_index(index, name, index_columns, unique=False)
        op.create_index(f"ix_{name}_resource_param", name, [*_KEY, *values], unique=False)
