import subprocess
import sys
from pathlib import Path

from agent.spool import EncodedReading, Spool


def reading(seq: int, t: float = 1000.0, size: int = 10, session: str = "s") -> EncodedReading:
    return EncodedReading(session, seq, t + seq, b"x" * size)


def test_spool_returns_readings_oldest_first_and_forgets_acknowledged(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    spool.add([reading(1), reading(2), reading(3)], now_epoch_s=1010)
    assert [r.reading.seq for r in spool.oldest(10)] == [1, 2, 3]
    spool.remove([("s", 2)])
    assert [r.reading.seq for r in spool.oldest(10)] == [1, 3]
    assert len(spool) == 2


def test_spool_survives_a_restart(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    spool.add([reading(1), reading(2)], now_epoch_s=1010)
    spool.close()
    again = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    assert [r.reading.payload for r in again.oldest(10)] == [b"x" * 10] * 2


def test_full_spool_drops_the_oldest_and_counts_them(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=35, max_age_s=10**6)
    dropped = spool.add([reading(i) for i in range(1, 6)], now_epoch_s=1010)
    assert dropped == 2
    assert [r.reading.seq for r in spool.oldest(10)] == [3, 4, 5]
    assert spool.dropped == 2


def test_readings_older_than_the_age_bound_are_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=100)
    spool.add([reading(1, t=0), reading(2, t=500)], now_epoch_s=550)
    assert [r.reading.seq for r in spool.oldest(10)] == [2]
    spool.close()
    assert Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=100).dropped == 1


def test_the_same_reading_is_stored_once(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    spool.add([reading(1)], now_epoch_s=1000)
    spool.add([reading(1)], now_epoch_s=1000)
    assert len(spool) == 1


def test_oldest_can_continue_after_a_row_id(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    spool.add([reading(i) for i in range(1, 5)], now_epoch_s=1010)
    first = spool.oldest(2)
    assert [r.reading.seq for r in spool.oldest(10, first[-1].row_id)] == [3, 4]


def test_default_bounds_hold_a_day_at_one_reading_a_second(tmp_path):
    from shared.config import AgentSettings
    settings = AgentSettings()
    day = 86400
    assert settings.spool_max_age_s >= day
    assert settings.spool_max_bytes >= day * 3500  # a full reading is ~3.4 KB on a desktop


def test_the_count_kept_in_memory_matches_the_table(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=35, max_age_s=100)
    spool.add([reading(i, t=1000) for i in range(1, 6)], now_epoch_s=1010)  # 2 over the size
    spool.add([reading(5, t=1000)], now_epoch_s=1010)  # already there
    spool.remove([("s", 4), ("s", 99)])
    table = spool._db.execute("select count(*) from readings").fetchone()[0]
    assert len(spool) == table == 2
    spool.close()
    assert len(Spool(tmp_path / "s.db", max_bytes=35, max_age_s=100)) == 2


def test_a_spool_never_needed_loads_no_sqlite_and_leaves_no_file(tmp_path):
    code = ("import sys\nfrom pathlib import Path\nfrom agent.spool import Spool\n"
            f"s = Spool(Path({str(tmp_path / 's.db')!r}), max_bytes=10**6, max_age_s=10**6)\n"
            "assert len(s) == 0 and s.dropped == 0 and s.oldest(5) == []\n"
            "s.close()\nprint('sqlite3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False"
    assert not (tmp_path / "s.db").exists()


def test_an_emptied_spool_removes_its_file_and_a_counting_one_keeps_it(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=10**6)
    spool.add([reading(1)], now_epoch_s=1010)
    assert (tmp_path / "s.db").exists()
    spool.remove([("s", 1)])
    spool.close()
    assert not any(tmp_path.iterdir())  # nothing kept, nothing to remember
    full = Spool(tmp_path / "full.db", max_bytes=15, max_age_s=10**6)
    full.add([reading(1), reading(2)], now_epoch_s=1010)  # one dropped
    full.remove([("s", 2)])
    full.close()
    assert Spool(tmp_path / "full.db", max_bytes=15, max_age_s=10**6).dropped == 1


def test_a_spool_left_by_an_older_agent_is_upgraded_and_keeps_its_readings(tmp_path):
    import sqlite3

    path = tmp_path / "spool.sqlite3"
    db = sqlite3.connect(path)
    db.execute("create table readings (id integer primary key, session_id text not null, "
               "seq integer not null, epoch_s real not null, payload blob not null, "
               "unique (session_id, seq))")
    db.execute("insert into readings (session_id, seq, epoch_s, payload) "
               "values ('s', 1, 1000.0, x'01')")
    db.commit()
    db.close()
    spool = Spool(path, max_bytes=10**6, max_age_s=10**6)
    assert [item.reading for item in spool.oldest(10)] == [EncodedReading("s", 1, 1000.0, b"\x01")]
    spool.add([EncodedReading("s", 2, 1001.0, b"\x02", unsynced_boot_s=12.5)], 1001.0)
    assert [item.reading.unsynced_boot_s for item in spool.oldest(10)] == [None, 12.5]
    spool.close()
