"""Fixtures for the SQL contract's tests: actors in each role.

An actor runs SQL the way PostgREST would for a request carrying its JWT claims; each
module's database (`db_url`, from tests/conftest.py) is its own clone of the schema.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from portraitkit.database import rpc


@pytest.fixture
def admin(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A superuser connection (autocommit) for arranging and inspecting state."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


class Actor:
    """Someone calling the database through the API: a role plus JWT claims."""

    def __init__(self, url: str, claims: dict[str, Any] | None, user_id: uuid.UUID | None = None):
        self.url = url
        self.claims = claims
        self.user_id = user_id
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, prepare_threshold=None)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def rpc(self, function: str, **args: Any) -> Any:
        """Call a contract function; scalar results come back as the value, sets as rows."""
        return rpc.call(self.conn, function, args, claims=self.claims)

    def query(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        """Run SQL as this actor (role and claims set as PostgREST would), then roll back."""
        role = (self.claims or {}).get("role", "anon")
        conn = self.conn
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                    (role, json.dumps(self.claims or {})),
                )
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else [{"rowcount": cur.rowcount}]
        finally:
            conn.rollback()


@pytest.fixture
def make_user(db_url: str, admin: psycopg.Connection[Any]) -> Iterator[Any]:
    """Create a user in auth.users (the sign-up trigger gives the profile) and an actor."""
    actors: list[Actor] = []

    def _make(credits: int | None = None, email: str | None = None) -> Actor:
        uid = uuid.uuid4()
        admin.execute(
            "insert into auth.users (id, email) values (%s, %s)",
            (uid, email or f"{uid.hex[:8]}@example.test"),
        )
        if credits is not None:
            admin.execute(
                "update public.profiles set starting_credits = %s, total_credits = %s where id = %s",
                (credits, credits, uid),
            )
        actor = Actor(
            db_url,
            {"sub": str(uid), "role": "authenticated", "aud": "authenticated"},
            user_id=uid,
        )
        actors.append(actor)
        return actor

    yield _make
    for actor in actors:
        actor.close()


@pytest.fixture
def service(db_url: str) -> Iterator[Actor]:
    actor = Actor(db_url, {"role": "service_role"})
    yield actor
    actor.close()


@pytest.fixture
def anon(db_url: str) -> Iterator[Actor]:
    actor = Actor(db_url, None)
    yield actor
    actor.close()


@pytest.fixture
def empty_queue(admin: psycopg.Connection[Any]) -> None:
    """The test owns the queue: nothing pending or running from earlier tests."""
    admin.execute(
        "update public.generations set status = 'cancelled' where status in ('pending', 'processing')"
    )


def create_batch(user: Actor, styles: list[str], prompt: str | None = None) -> Any:
    """The user's batch of these styles from a photo in their folder; its id."""
    return user.rpc(
        "create_generation_batch",
        style_keys=styles,
        source_image_path=f"{user.user_id}/s.png",
        custom_prompt=prompt,
    )


def ledger_balances(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Users whose balance is not explained by their ledger (should always be empty)."""
    return admin.execute(
        """
        select p.id, p.starting_credits, p.total_credits, coalesce(sum(l.delta), 0) as ledger
          from public.profiles p
          left join public.credit_ledger l on l.user_id = p.id
         group by p.id
        having p.starting_credits + coalesce(sum(l.delta), 0) <> p.total_credits
        """
    ).fetchall()


def batch_row(admin: psycopg.Connection[Any], batch_id: Any) -> dict[str, Any]:
    row = admin.execute(
        "select * from public.generation_batches where id = %s", (batch_id,)
    ).fetchone()
    assert row is not None
    return row
