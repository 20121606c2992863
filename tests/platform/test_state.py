"""The stream state store (pipelines/platform/state.py) on SQLite and on the real PostgreSQL: entries and positions
committed together, loaded by partition, seeded once, and logs recognised by their fingerprints."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.platform.state import Position, StateStore, fingerprint

pytestmark = pytest.mark.integration

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    processor = f"test-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else POSTGRES
    opened = StateStore(url, processor)
    yield opened
    for partition in range(3):
        for topic in ("in", "by-key"):
            opened.forget(topic, partition)
    opened.close()


def test_entries_and_positions_are_committed_together_and_loaded_by_partition(store: StateStore) -> None:
    first = store.commit(
        {("in", 0, "customer", "C1"): b"\x01\x02", ("in", 1, "customer", "C2"): b"\x03", ("in", 0, "seen", "t1"): b""},
        {("in", 0): Position(10, "fp-9"), ("in", 1): Position(4, "fp-3")},
    )
    second = store.commit(
        {("in", 0, "customer", "C1"): b"\x09", ("in", 0, "seen", "t1"): None}, {("in", 0): Position(12, "fp-11")}
    )
    assert second == first + 1 == store.latest_commit()
    zero = store.load([("in", 0)])
    assert zero.positions == {("in", 0): Position(12, "fp-11")}
    assert zero.entries == {("in", 0, "customer", "C1"): b"\x09"}  # updated; the deleted id is gone
    assert store.load([("in", 1)]).of("in", 1, "customer") == {"C2": b"\x03"}
    assert store.positions() == {("in", 0): 12, ("in", 1): 4}
    # Entries of a kind written by older commits can be forgotten (the ids remembered for dedupe age out).
    store.commit({("in", 1, "seen", "old"): b""}, {})
    store.commit({("in", 1, "seen", "new"): b""}, {}, keep_commits={("in", 1, "seen"): 0})
    assert set(store.load([("in", 1)]).of("in", 1, "seen")) == {"new"}


def test_a_processor_is_seeded_once(store: StateStore) -> None:
    assert not store.has_state()
    assert store.seed({("by-key", 2, "terminal", "T1"): b"\x05"})
    assert store.has_state()
    assert not store.seed({("by-key", 2, "terminal", "T1"): b"\x06"})  # a second start keeps what the first wrote
    assert store.load([("by-key", 2)]).entries == {("by-key", 2, "terminal", "T1"): b"\x05"}


def test_an_unreachable_store_is_a_dependency_failure(tmp_path: Path) -> None:
    from pipelines.platform.errors import DependencyUnavailable

    with pytest.raises(
        DependencyUnavailable, match="The stream state store at postgresql://nobody:\\*\\*\\*@127.0.0.1:1/x"
    ):
        StateStore("postgresql://nobody:secret@127.0.0.1:1/x", "p")


@pytest.mark.unit
def test_fingerprints_tell_records_apart() -> None:
    assert fingerprint(b"k", b"v") == fingerprint(b"k", b"v") != fingerprint(b"k", b"w")
    assert fingerprint(None, b"v") != fingerprint(b"", b"\x00v")
