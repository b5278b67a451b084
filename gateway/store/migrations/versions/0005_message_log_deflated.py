"""The message log keeps its ACK and detail deflated (gateway/store/content.py) and the ACK's MSA-1
in a column of its own (``ack_code``), which the message browser filters on now that the ACK's
bytes are no longer searchable in SQL. ``detail`` becomes binary. Rows already there keep their
plain ACK and detail, which read as they are; their ``ack_code`` is filled from their ACK.

Revision ID: 0005
Revises: 0004
"""
import zlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BATCH = 1000


def _msa_1(ack: bytes | None) -> str | None:
    """As gateway.ingest.messagelog.ack_code read it when this revision was written."""
    if not ack:
        return None
    for line in bytes(ack).replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"MSA") and len(line) > 5:
            return line[4:6].decode("ascii", "replace")
    return None


def upgrade() -> None:
    with op.batch_alter_table("message_log") as batch:
        batch.add_column(sa.Column("ack_code", sa.String(length=2), nullable=True))
        batch.alter_column("detail", existing_type=sa.Text(), type_=sa.LargeBinary(),
                           postgresql_using="convert_to(detail, 'UTF8')")
    conn = op.get_bind()
    log = sa.table("message_log", sa.column("id", sa.Integer), sa.column("ack", sa.LargeBinary),
                   sa.column("ack_code", sa.String))
    last = 0
    while True:
        rows = conn.execute(sa.select(log.c.id, log.c.ack).where(log.c.id > last, log.c.ack.is_not(None))
                            .order_by(log.c.id).limit(_BATCH)).all()
        if not rows:
            break
        conn.execute(sa.update(log).where(log.c.id == sa.bindparam("row_id")).values(ack_code=sa.bindparam("code")),
                     [{"row_id": row.id, "code": _msa_1(row.ack)} for row in rows])
        last = rows[-1].id


def downgrade() -> None:
    # rows written deflated would be unreadable by revision 0004's gateway: they are inflated first
    conn = op.get_bind()
    log = sa.table("message_log", sa.column("id", sa.Integer), sa.column("ack", sa.LargeBinary),
                   sa.column("detail", sa.LargeBinary))
    last = 0
    while True:
        rows = conn.execute(sa.select(log.c.id, log.c.ack, log.c.detail).where(log.c.id > last)
                            .order_by(log.c.id).limit(_BATCH)).all()
        if not rows:
            break
        plain = [{"row_id": r.id, "ack_plain": _plain(r.ack), "detail_plain": _plain(r.detail)}
                 for r in rows]
        conn.execute(sa.update(log).where(log.c.id == sa.bindparam("row_id"))
                     .values(ack=sa.bindparam("ack_plain"), detail=sa.bindparam("detail_plain")), plain)
        last = rows[-1].id
    with op.batch_alter_table("message_log") as batch:
        batch.drop_column("ack_code")
        batch.alter_column("detail", existing_type=sa.LargeBinary(), type_=sa.Text(),
                           postgresql_using="convert_from(detail, 'UTF8')")


def _plain(value):  # noqa: ANN001
    if value is None or isinstance(value, str):
        return value
    value = bytes(value)
    return zlib.decompress(value[1:], -15) if value[:1] == b"\x00" else value
