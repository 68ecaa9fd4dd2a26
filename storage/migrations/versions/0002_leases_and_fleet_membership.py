"""Instance leases with fencing tokens, and fleet membership (DESIGN §3.1, §3.2).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_members",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_fleet_members")),
    )
    op.create_table(
        "instance_leases",
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_leases_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_leases")),
    )
    op.create_index(op.f("ix_instance_leases_owner"), "instance_leases", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_instance_leases_owner"), table_name="instance_leases")
    op.drop_table("instance_leases")
    op.drop_table("fleet_members")
