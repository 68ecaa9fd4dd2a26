"""Instance commands: the desired connection state, durable on the instance row.

`desired_state` (auto | connect | disconnect | logout) is what the instance's owner must make
true — also a new owner after a handover; `link_phone` is the number a pairing-code link is for;
`command_seq` grows with every command so an owner applies each one once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DESIRED = sa.Enum(
    "auto",
    "connect",
    "disconnect",
    "logout",
    name="desired_state",
    native_enum=False,
    create_constraint=True,
    length=24,
)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("desired_state", DESIRED, nullable=False, server_default="auto"))
        batch.add_column(sa.Column("link_phone", sa.String(length=15), nullable=True))
        batch.add_column(
            sa.Column("command_seq", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("command_seq")
        batch.drop_column("link_phone")
        batch.drop_constraint(op.f("ck_instances_desired_state"), type_="check")
        batch.drop_column("desired_state")
