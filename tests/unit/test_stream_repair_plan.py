"""What the relay's stream repair decides from the stream's and the store's contents."""

from threadlog.infra.stream.repair import (
    Repair,
    StoreContents,
    StreamContents,
    plan_repair,
    republished_id,
)

WHOLE = StreamContents(messages=100, last_sequence=100, first_position=1, last_position=100)
STORE = StoreContents(first_position=1, events_up_to_stream_last=100)


def test_a_stream_holding_everything_relayed_needs_no_repair() -> None:
    assert plan_repair(WHOLE, STORE, relayed=100) is None


def test_nothing_relayed_yet_needs_no_repair() -> None:
    empty = StreamContents(messages=0, last_sequence=0, first_position=0, last_position=0)
    assert plan_repair(empty, StoreContents(0, 0), relayed=0) is None


def test_an_empty_stream_is_refilled_from_the_first_event() -> None:
    purged = StreamContents(messages=0, last_sequence=100, first_position=0, last_position=0)
    assert plan_repair(purged, StoreContents(1, 0), relayed=100) == Repair(
        "empty", resume_after=0, purge=False, tag="r100"
    )


def test_a_stream_missing_its_head_is_purged_and_refilled() -> None:
    appended = StreamContents(messages=10, last_sequence=110, first_position=101, last_position=110)
    repair = plan_repair(appended, StoreContents(1, 110), relayed=110)
    assert repair is not None and (repair.kind, repair.resume_after, repair.purge) == (
        "head",
        0,
        True,
    )


def test_a_stream_with_a_hole_is_purged_and_refilled() -> None:
    holed = StreamContents(messages=90, last_sequence=100, first_position=1, last_position=100)
    repair = plan_repair(holed, STORE, relayed=100)
    assert repair is not None and (repair.kind, repair.resume_after, repair.purge) == (
        "hole",
        0,
        True,
    )


def test_a_stream_missing_its_tail_is_refilled_after_its_last_event() -> None:
    cut = StreamContents(messages=80, last_sequence=100, first_position=1, last_position=80)
    repair = plan_repair(cut, StoreContents(1, 80), relayed=100)
    assert repair is not None and (repair.kind, repair.resume_after, repair.purge) == (
        "tail",
        80,
        False,
    )


def test_duplicates_on_the_stream_are_not_a_hole() -> None:
    doubled = StreamContents(messages=120, last_sequence=120, first_position=1, last_position=100)
    assert plan_repair(doubled, STORE, relayed=100) is None


def test_a_republished_event_has_a_message_id_of_its_own() -> None:
    assert republished_id("e1", "r100") == "e1:r100"
