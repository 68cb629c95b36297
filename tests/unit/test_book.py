"""The book: identity by uid, never backwards, finished schedules kept compactly."""

from __future__ import annotations

from typing import Any

from flag_scheduler.scheduling.book import Book
from flag_scheduler.models import Phase

NS = "team-a"


def schedule_body(name: str, uid: str, rv: int, phase: Phase = Phase.PENDING, flag: str = "checkout",
                  at: str = "2026-12-01T09:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": name, "uid": uid, "resourceVersion": str(rv), "generation": 1},
        "spec": {"flagRef": {"name": flag}, "scheduledAt": at, "updates": {"enabled": True}},
        "status": {"phase": phase.value},
    }


def flag_body(name: str, uid: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": name, "uid": uid, "resourceVersion": str(rv)},
            "spec": {"enabled": False}}


def names(book: Book, flag: str = "checkout") -> list[tuple[str, str]]:
    return sorted((s.ref.name, s.ref.uid) for s in book.schedules_of((NS, flag)))


def test_a_late_deleted_event_of_an_old_object_spares_its_recreated_namesake() -> None:
    book = Book()
    book.observe_schedule("ADDED", schedule_body("go-live", "uid-1", 10))
    book.observe_schedule("ADDED", schedule_body("go-live", "uid-2", 20))  # re-created under the name
    assert names(book) == [("go-live", "uid-2")]
    assert book.observe_schedule("DELETED", schedule_body("go-live", "uid-1", 15)) == []
    assert names(book) == [("go-live", "uid-2")]


def test_a_late_copy_of_a_deleted_namesake_is_ignored() -> None:
    book = Book()
    book.observe_schedule("ADDED", schedule_body("go-live", "uid-2", 20))
    assert book.put_schedule(schedule_body("go-live", "uid-1", 12)) is not None  # e.g. a late write response
    assert names(book) == [("go-live", "uid-2")]


def test_a_deleted_schedule_does_not_come_back_through_a_late_write_response() -> None:
    book = Book()
    book.observe_schedule("ADDED", schedule_body("s", "uid-1", 10))
    book.observe_schedule("DELETED", schedule_body("s", "uid-1", 11))
    book.put_schedule(schedule_body("s", "uid-1", 12))
    assert names(book) == []


def test_older_versions_never_replace_newer_ones() -> None:
    book = Book()
    book.observe_schedule("MODIFIED", schedule_body("s", "uid-1", 20, Phase.RETRYING))
    assert book.observe_schedule("MODIFIED", schedule_body("s", "uid-1", 19, Phase.PENDING)) == []
    assert book.schedule("uid-1").status.phase is Phase.RETRYING


def test_finished_schedules_leave_the_live_set_and_stay_finished() -> None:
    book = Book()
    book.observe_schedule("ADDED", schedule_body("s", "uid-1", 10))
    assert book.observe_schedule("MODIFIED", schedule_body("s", "uid-1", 11, Phase.APPLIED)) == [(NS, "checkout")]
    assert names(book) == [] and book.pending_count() == 0 and book.finished_count() == 1
    # A late Pending copy (say, the watch lagging behind the operator's own write) is ignored.
    assert book.observe_schedule("MODIFIED", schedule_body("s", "uid-1", 10)) == []
    assert names(book) == []
    book.observe_schedule("DELETED", schedule_body("s", "uid-1", 12, Phase.APPLIED))
    assert book.finished_count() == 0


def test_moving_a_schedule_to_another_flag_replans_both() -> None:
    book = Book()
    book.observe_schedule("ADDED", schedule_body("s", "uid-1", 10, flag="a"))
    touched = book.observe_schedule("MODIFIED", schedule_body("s", "uid-1", 11, flag="b"))
    assert set(touched) == {(NS, "a"), (NS, "b")}
    assert names(book, "a") == [] and names(book, "b") == [("s", "uid-1")]
    assert book.flag_keys() == [(NS, "b")]


def test_a_malformed_schedule_is_not_recorded() -> None:
    book = Book()
    body = schedule_body("s", "uid-1", 10)
    body["spec"]["scheduledAt"] = "0000-01-01T00:00:00Z"  # the API server's date-time format admits it
    assert book.observe_schedule("ADDED", body) == []
    assert book.put_schedule(body) is None


def test_flags_by_name_with_uid_aware_deletes() -> None:
    book = Book()
    assert book.observe_flag("ADDED", flag_body("checkout", "f-1", 5)) == (NS, "checkout")
    assert book.observe_flag("ADDED", flag_body("checkout", "f-2", 9)) == (NS, "checkout")  # re-created
    assert book.observe_flag("DELETED", flag_body("checkout", "f-1", 6)) is None  # the old one's late delete
    assert book.flag((NS, "checkout")).ref.uid == "f-2"
    assert book.observe_flag("MODIFIED", flag_body("checkout", "f-1", 7)) is None  # a late copy of the old one
    assert book.flag((NS, "checkout")).ref.uid == "f-2"
    assert book.observe_flag("DELETED", flag_body("checkout", "f-2", 10)) == (NS, "checkout")
    assert book.flag((NS, "checkout")) is None


from datetime import UTC, datetime, timedelta  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flag_scheduler.timing import head_of_line  # noqa: E402

ops = st.lists(st.tuples(st.sampled_from(["put", "cancel", "finish", "delete"]), st.integers(0, 7),
                         st.integers(0, 3)), max_size=40)


@given(ops)
def test_the_flag_index_agrees_with_the_pure_rules(steps: list[tuple[str, int, int]]) -> None:
    """Whatever happens to a flag's schedules, the book's O(1) answers equal timing's O(n) ones."""
    book, rv = Book(), 0
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for op, i, minutes in steps:
        rv += 1
        body = schedule_body(f"s{i}", f"uid-{i}", rv, at=(t0 + timedelta(minutes=minutes)).isoformat())
        if op == "cancel":
            body["spec"]["cancelled"] = True
        if op == "finish":
            body["status"]["phase"] = "Applied"
        book.observe_schedule("DELETED" if op == "delete" else "MODIFIED", body)
        live = book.schedules_of((NS, "checkout"))
        head = book.head((NS, "checkout"))
        expected = head_of_line(live)
        assert (head.ref.uid if head else None) == (expected.ref.uid if expected else None)
        assert {s.ref.uid for s in book.cancelled_of((NS, "checkout"))} == {s.ref.uid for s in live if s.spec.cancelled}


def test_until_the_book_is_complete_a_schedule_it_has_not_seen_still_awaits_its_status() -> None:
    # A flag's marker names the schedules whose change landed and whose status is not written yet.
    # Before the finished schedules are listed, one the book has not seen may be one created after
    # the first LIST and applied by the previous leader: its entry must stay.
    book = Book()
    book.complete = False
    book.observe_schedule(None, schedule_body("done", "uid-done", 5, Phase.APPLIED))
    book.observe_schedule(None, schedule_body("gone", "uid-gone", 6))
    book.observe_schedule("DELETED", schedule_body("gone", "uid-gone", 7))
    assert book.awaits_status("uid-unseen") is True
    assert book.awaits_status("uid-done") is False and book.awaits_status("uid-gone") is False
    book.complete = True
    assert book.awaits_status("uid-unseen") is False
