"""Instance leases with fencing tokens, and fleet membership (DESIGN §3.1, §3.2).

A lease says which session worker owns an instance's socket. Every acquisition increments the
instance's `token` (it is never reset, also not on release), so a token names one tenure. A
worker renews all its leases in one statement per round; a lease that is not renewed before
`expires_at` can be taken by another worker. WhatsApp cannot check our token, so owners must
also stop themselves when they could not renew in time (the session worker keeps a local
deadline); the database checks the token wherever an effect is recorded (`held_by` is the
fencing predicate for outbox and instance updates).

Times come from the database clock (Postgres `clock_timestamp()`; SQLite, single-host, the
process clock), so workers on different hosts agree on expiry. Tests inject a clock.

Membership: each session worker upserts a heartbeat; members whose heartbeat is older than
`member_ttl` are not live. A draining member is live but takes no new instances.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from storage.models import FleetMember, InstanceLease, utcnow
from storage.repositories.upsert import insert_or_ignore

DbClock = Callable[[Session], datetime]


def database_clock(session: Session) -> datetime:
    """The database's current time (not the transaction start): one clock for every host."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(text("SELECT clock_timestamp()"))
        assert isinstance(value, datetime)
        return value
    return utcnow()


@dataclass(frozen=True, slots=True)
class Lease:
    instance_id: uuid.UUID
    owner: str
    token: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    worker_id: str
    heartbeat_at: datetime
    draining: bool
    capacity: int


def held_by(instance_id: object, owner: str, token: int, now: datetime) -> ColumnElement[bool]:
    """SQL predicate: `owner` still holds the lease with `token` (the fencing check)."""
    return exists().where(
        InstanceLease.instance_id == instance_id,
        InstanceLease.owner == owner,
        InstanceLease.token == token,
        InstanceLease.expires_at > now,
    )


class Leases:
    def __init__(
        self, factory: sessionmaker[Session], ttl: float, clock: DbClock = database_clock
    ) -> None:
        self._factory = factory
        self._ttl = timedelta(seconds=ttl)
        self._clock = clock

    def now(self) -> datetime:
        with self._factory() as s:
            return self._clock(s)

    def acquire(self, instance_id: uuid.UUID, owner: str) -> Lease | None:
        """Take the lease if it is free or expired; the new token, or None if someone holds it."""
        with self._factory.begin() as s:
            insert_or_ignore(
                s, InstanceLease, {"instance_id": instance_id, "token": 0}, ("instance_id",)
            )
            now = self._clock(s)
            expires = now + self._ttl
            token = s.execute(
                update(InstanceLease)
                .where(
                    InstanceLease.instance_id == instance_id,
                    or_(
                        InstanceLease.owner.is_(None),
                        InstanceLease.expires_at.is_(None),
                        InstanceLease.expires_at <= now,
                    ),
                )
                .values(
                    owner=owner, token=InstanceLease.token + 1, expires_at=expires, acquired_at=now
                )
                .returning(InstanceLease.token)
            ).scalar_one_or_none()
        return None if token is None else Lease(instance_id, owner, int(token), expires)

    def renew(self, owner: str, leases: Iterable[Lease]) -> dict[uuid.UUID, Lease]:
        """Extend every lease `owner` still holds with the same token; returns those renewed.

        A lease missing from the result is lost: its session must stop at once.
        """
        wanted = {lease.instance_id: lease.token for lease in leases}
        if not wanted:
            return {}
        with self._factory.begin() as s:
            now = self._clock(s)
            expires = now + self._ttl
            rows = s.execute(
                update(InstanceLease)
                .where(
                    InstanceLease.owner == owner,
                    InstanceLease.expires_at > now,
                    InstanceLease.instance_id.in_(list(wanted)),
                )
                .values(expires_at=expires)
                .returning(InstanceLease.instance_id, InstanceLease.token)
            ).all()
            renewed: dict[uuid.UUID, Lease] = {}
            for instance_id, token in rows:
                if wanted.get(instance_id) == token:
                    renewed[instance_id] = Lease(instance_id, owner, int(token), expires)
        return renewed

    def release(self, lease: Lease) -> bool:
        """Give the lease up (handover); False if it was no longer ours."""
        with self._factory.begin() as s:
            result = s.execute(
                update(InstanceLease)
                .where(
                    InstanceLease.instance_id == lease.instance_id,
                    InstanceLease.owner == lease.owner,
                    InstanceLease.token == lease.token,
                )
                .values(owner=None, expires_at=None)
                .returning(InstanceLease.instance_id)
            ).first()
        return result is not None

    def holder(self, instance_id: uuid.UUID) -> Lease | None:
        """The live lease on `instance_id`, if any."""
        with self._factory() as s:
            now = self._clock(s)
            row = s.get(InstanceLease, instance_id)
            if row is None or row.owner is None or row.expires_at is None or row.expires_at <= now:
                return None
            return Lease(instance_id, row.owner, row.token, row.expires_at)

    def owned_by(self, owner: str) -> list[Lease]:
        with self._factory() as s:
            now = self._clock(s)
            rows = s.scalars(
                select(InstanceLease).where(
                    InstanceLease.owner == owner, InstanceLease.expires_at > now
                )
            ).all()
            return [
                Lease(r.instance_id, owner, r.token, r.expires_at)
                for r in rows
                if r.expires_at is not None
            ]


class Membership:
    def __init__(
        self, factory: sessionmaker[Session], member_ttl: float, clock: DbClock = database_clock
    ) -> None:
        self._factory = factory
        self._ttl = timedelta(seconds=member_ttl)
        self._clock = clock

    def heartbeat(self, worker_id: str, *, draining: bool = False, capacity: int = 1) -> None:
        with self._factory.begin() as s:
            now = self._clock(s)
            found = s.execute(
                update(FleetMember)
                .where(FleetMember.worker_id == worker_id)
                .values(heartbeat_at=now, draining=draining, capacity=capacity)
                .returning(FleetMember.worker_id)
            ).first()
            if found is None:
                s.add(
                    FleetMember(
                        worker_id=worker_id,
                        heartbeat_at=now,
                        started_at=now,
                        draining=draining,
                        capacity=capacity,
                    )
                )

    def live(self) -> list[Member]:
        """Members whose heartbeat is fresh, ordered by id (draining ones included)."""
        with self._factory() as s:
            cutoff = self._clock(s) - self._ttl
            rows = s.scalars(
                select(FleetMember)
                .where(FleetMember.heartbeat_at > cutoff)
                .order_by(FleetMember.worker_id)
            ).all()
            return [Member(r.worker_id, r.heartbeat_at, r.draining, r.capacity) for r in rows]

    def leave(self, worker_id: str) -> None:
        with self._factory.begin() as s:
            s.execute(delete(FleetMember).where(FleetMember.worker_id == worker_id))

    def prune(self, older_than: float) -> int:
        """Forget members silent for `older_than` seconds (housekeeping)."""
        with self._factory.begin() as s:
            cutoff = self._clock(s) - timedelta(seconds=older_than)
            gone = s.execute(
                delete(FleetMember)
                .where(FleetMember.heartbeat_at < cutoff)
                .returning(FleetMember.worker_id)
            ).all()
        return len(gone)


def assigned(members: Sequence[Member]) -> list[str]:
    """The members eligible for new instances (live and not draining)."""
    return [m.worker_id for m in members if not m.draining]


__all__ = [
    "DbClock",
    "Lease",
    "Leases",
    "Member",
    "Membership",
    "assigned",
    "database_clock",
    "held_by",
]
