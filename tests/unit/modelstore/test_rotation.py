"""plan_rotation: which backup snapshots N daily + M weekly keeps (pure, dated)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loraplane.modelstore import StoreError
from loraplane.modelstore.backup import parse_snapshot_id, plan_rotation, snapshot_id


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc)


def test_keeps_newest_per_day_for_n_days():
    snaps = [t("2026-12-01T02:00"), t("2026-12-01T14:00"), t("2026-12-02T02:00"), t("2026-12-02T14:00"),
             t("2026-12-03T02:00")]
    keep, delete = plan_rotation(snaps, keep_daily=2, keep_weekly=0)
    assert keep == [t("2026-12-02T14:00"), t("2026-12-03T02:00")]
    assert delete == [t("2026-12-01T02:00"), t("2026-12-01T14:00"), t("2026-12-02T02:00")]


def test_days_without_a_snapshot_do_not_count():
    snaps = [t("2026-11-20T03:00"), t("2026-11-25T03:00"), t("2026-12-01T03:00")]
    keep, _ = plan_rotation(snaps, keep_daily=2, keep_weekly=0)
    assert keep == [t("2026-11-25T03:00"), t("2026-12-01T03:00")]


def test_weekly_keeps_newest_of_each_iso_week_and_unions_with_daily():
    # one snapshot a day at 03:00 for 30 days, 2026-11-02 (a Monday) .. 2026-12-01
    snaps = [t("2026-11-02T03:00") + timedelta(days=i) for i in range(30)]
    keep, delete = plan_rotation(snaps, keep_daily=3, keep_weekly=3)
    # daily: Dec 1, Nov 30, Nov 29; weekly: week of Dec 1 (newest = Dec 1), the week
    # ending Sun Nov 29 (Nov 29, already daily) and the week ending Sun Nov 22.
    assert keep == [t("2026-11-22T03:00"), t("2026-11-29T03:00"), t("2026-11-30T03:00"), t("2026-12-01T03:00")]
    assert len(delete) == 26 and set(keep).isdisjoint(delete)


def test_iso_week_spans_a_year_boundary():
    # 2026-12-31 (Thu) and 2027-01-03 (Sun) are in ISO week 2026-W53; 2027-01-04 starts W01.
    snaps = [t("2026-12-28T00:00"), t("2026-12-31T00:00"), t("2027-01-03T00:00"), t("2027-01-04T00:00")]
    keep, _ = plan_rotation(snaps, keep_daily=0, keep_weekly=2)
    assert keep == [t("2027-01-03T00:00"), t("2027-01-04T00:00")]


def test_newest_is_always_kept_and_bad_counts_refused():
    snaps = [t("2026-12-01T00:00"), t("2026-12-02T00:00")]
    assert plan_rotation(snaps, 0, 0) == ([t("2026-12-02T00:00")], [t("2026-12-01T00:00")])
    assert plan_rotation([], 7, 4) == ([], [])
    with pytest.raises(StoreError):
        plan_rotation(snaps, -1, 4)


def test_snapshot_ids_sort_like_times_and_round_trip():
    a, b = t("2026-12-01T09:05:00.000001"), t("2026-12-01T10:00:00")
    assert snapshot_id(a) < snapshot_id(b) and parse_snapshot_id(snapshot_id(a)) == a
    with pytest.raises(StoreError, match="not a snapshot id"):
        parse_snapshot_id("yesterday")
