"""Process metrics: the busiest processes and a count by state, every ``process_period_s``.

Pure core: :func:`parse_stat`, :func:`cpu_percents`, :func:`count_states`,
:func:`select_top`, :func:`process_info` and :func:`build_processes` take values and return
values. I/O edge: :class:`ProcScanner` reads /proc directly on Linux (the psutil fallback
for other platforms, :class:`agent.collect.portable.PsutilProcesses`, lives in the one module that
imports psutil); :class:`ProcessSampler` keeps the previous scan, so CPU % comes from the
CPU-time deltas between two periods; :class:`ProcessWatcher` runs it on its own schedule
in a thread that ``agent/main.py`` starts, off the per-second loop.

Cost (FACTS.md, psutil 7.2 here): ``process_iter`` costs ~63 µs per process with 4
attributes and ~126 µs with name and user. So each period reads ONE file per process,
``/proc/<pid>/stat`` (state, CPU ticks, threads, start time, RSS), kept open between
periods (up to ``KEEP_OPEN`` of them); the name and user are read once per process and
kept, keyed on (pid, start time) so a reused pid is a new process; ``/proc/<pid>/io`` is
read only for the few processes that made a top list. Measured here, back to back: ~0.1×
of process_iter with 4 attributes (bench/agent_cost.py --processes).
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import orjson

from shared.schema import ProcessesV1, ProcessInfo

log = logging.getLogger(__name__)

Key = tuple[int, float]  # (pid, start time): a pid reused by a new process is a new key

# /proc/<pid>/stat state letters (fs/proc/array.c, task_state_array) named as psutil does.
STATUSES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped",
            "t": "tracing-stop", "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill",
            "W": "waking", "I": "idle", "P": "parked"}
_STATE = {k.encode(): v for k, v in STATUSES.items()}
# As procps top's "Tasks:" line: disk sleep and idle kernel threads count as sleeping.
_SLEEPING = frozenset({"sleeping", "disk-sleep", "idle"})
COMM_MAX = 15  # the kernel keeps the first 15 bytes of a name (TASK_COMM_LEN - 1)
KEEP_OPEN = 256  # stat files kept open, far under the usual 1024 open-file limit
OFFSET_S = 0.5  # scans run half a second off the per-second readings (see ProcessWatcher)
# The most a process section may add to a reading: the hub quarantines a message over its
# max_payload_bytes (64 KiB by default), which would lose the reading with it. Ten
# processes per list take ~4 KB; a large process_top_n is shortened to fit (fit_section).
MAX_SECTION_BYTES = 32 * 1024
IDLE_WAIT_S = 60.0  # while off, the watcher looks at its stop event at least this often


class ProcRecord(NamedTuple):
    """One process at one scan: cumulative CPU seconds and current memory."""

    pid: int
    start: float  # start time, any unit, only compared for equality (reused pids)
    status: str
    cpu_s: float  # user + system seconds since the process started
    rss_bytes: int
    threads: int | None
    name: str
    user: str | None

    @property
    def key(self) -> Key:
        return (self.pid, self.start)


# What parse_stat returns: comm (bytes, decoded only for a process not seen before), state
# letter, utime + stime ticks, threads, start time ticks, RSS pages. A plain tuple: one is
# made per process per period, and a NamedTuple's __new__ costs ~0.5 µs more.
StatFields = tuple[bytes, bytes, int, int, int, int]


class Scanner(Protocol):
    """Lists every process (cheap attributes only) and reads one process's I/O counters."""

    def scan(self) -> list[ProcRecord]: ...

    def io(self, pid: int) -> tuple[int | None, int | None]: ...


def parse_stat(data: bytes) -> StatFields:
    """Parse ``/proc/<pid>/stat`` (proc(5)); raise ValueError if it is not one.

    The name sits in parentheses and may itself hold spaces and ')': the fields start
    after the LAST ')'.
    """
    close = data.rfind(b")")
    open_ = data.find(b"(")
    if close < 0 or open_ < 0:
        raise ValueError("not a /proc/<pid>/stat line")
    # Split only as far as field 24 (rss); the 28 fields after it are not needed.
    rest = data[close + 2:].split(None, 22)
    if len(rest) < 22:
        raise ValueError("a /proc/<pid>/stat line with too few fields")
    # rest[0] is field 3 (state): field N is rest[N - 3] (proc(5) numbers from 1).
    return (data[open_ + 1:close], rest[0], int(rest[11]) + int(rest[12]),
            int(rest[17]), int(rest[19]), int(rest[21]))


def full_name(comm: str, cmdline: bytes) -> str:
    """Return the process name as psutil does: comm, or argv[0]'s basename if comm was cut."""
    if len(comm) >= COMM_MAX and cmdline:
        argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
        extended = os.path.basename(argv0)
        if extended.startswith(comm):
            return extended
    return comm


def real_uid(status: bytes) -> int | None:
    """Return the real uid from ``/proc/<pid>/status`` (its ``Uid:`` line)."""
    at = status.find(b"\nUid:")
    if at < 0:
        return None
    fields = status[at + 5:status.find(b"\n", at + 1)].split()
    return int(fields[0]) if fields else None


def cpu_percents(prev: Mapping[Key, float] | None, records: Sequence[ProcRecord],
                 dt_s: float | None) -> list[float | None]:
    """Return each process's CPU % of one core between the previous scan and this one.

    None for every process on the first scan (no previous one) or a non-positive interval.
    A process absent from the previous scan started since (its key includes its start
    time), so all its CPU time falls in the interval. CPU time that went backwards cannot
    happen for one key; it gives None rather than a negative figure.
    """
    if prev is None or dt_s is None or dt_s <= 0:
        return [None] * len(records)
    out: list[float | None] = []
    for r in records:
        delta = r.cpu_s - prev.get((r.pid, r.start), 0.0)
        out.append(round(100.0 * delta / dt_s, 1) if delta >= 0 else None)
    return out


def count_states(statuses: Iterable[str]) -> dict[str, int]:
    """Count processes: all, running, sleeping (incl. disk sleep and idle), zombie, other."""
    counts = {"count": 0, "running": 0, "sleeping": 0, "zombie": 0, "other": 0}
    for status in statuses:
        counts["count"] += 1
        if status == "running":
            counts["running"] += 1
        elif status in _SLEEPING:
            counts["sleeping"] += 1
        elif status == "zombie":
            counts["zombie"] += 1
        else:
            counts["other"] += 1
    return counts


def select_top(records: Sequence[ProcRecord], cpus: Sequence[float | None],
               top_n: int) -> tuple[list[int], list[int]]:
    """Return the indices of the top ``top_n`` by CPU % and by RSS, busiest first.

    Ties (and unknown CPU %, ranked last) are broken by the other measure, then by pid,
    so the order is stable from one scan to the next.
    """
    if top_n <= 0:
        return [], []
    order = range(len(records))
    cpu = [-1.0 if c is None else c for c in cpus]
    by_cpu = sorted(order, key=lambda i: (-cpu[i], -records[i].rss_bytes, records[i].pid))
    by_mem = sorted(order, key=lambda i: (-records[i].rss_bytes, -cpu[i], records[i].pid))
    return by_cpu[:top_n], by_mem[:top_n]


def process_info(record: ProcRecord, cpu: float | None, memory_total_bytes: int | None,
                 io: tuple[int | None, int | None] = (None, None)) -> ProcessInfo:
    """Return one process as the message describes it."""
    memory_percent = (round(min(100.0, 100.0 * record.rss_bytes / memory_total_bytes), 2)
                      if memory_total_bytes else None)
    return {"pid": record.pid, "name": record.name[:256], "user": record.user,
            "cpu_percent": cpu, "rss_bytes": record.rss_bytes,
            "memory_percent": memory_percent, "threads": record.threads,
            "status": record.status[:32], "io_read_bytes": io[0], "io_write_bytes": io[1]}


def build_processes(records: Sequence[ProcRecord], cpus: Sequence[float | None],
                    top: tuple[list[int], list[int]], memory_total_bytes: int | None,
                    period_s: float,
                    io: Mapping[int, tuple[int | None, int | None]]) -> ProcessesV1:
    """Return the top-N lists and the counts by state of one scan.

    Args:
        top: what :func:`select_top` chose (indices by CPU, by memory).
        io: I/O counters by pid, for (at least) the processes that make a list.
    """
    cpu_idx, mem_idx = top
    counts = count_states(r.status for r in records)

    def infos(indices: list[int]) -> list[ProcessInfo]:
        return [process_info(records[i], cpus[i], memory_total_bytes,
                             io.get(records[i].pid, (None, None))) for i in indices]

    return {"period_s": round(period_s, 3), "count": counts["count"],
            "running": counts["running"], "sleeping": counts["sleeping"],
            "zombie": counts["zombie"], "other": counts["other"],
            "top_cpu": infos(cpu_idx), "top_memory": infos(mem_idx)}


def fit_section(section: ProcessesV1, max_bytes: int = MAX_SECTION_BYTES) -> ProcessesV1:
    """Return the section, its top lists shortened (least busy dropped) to fit ``max_bytes``."""
    while (len(orjson.dumps(section)) > max_bytes
           and (section["top_cpu"] or section["top_memory"])):
        keep = max(len(section["top_cpu"]), len(section["top_memory"])) * 3 // 4
        section = section.copy()
        section["top_cpu"] = section["top_cpu"][:keep]
        section["top_memory"] = section["top_memory"][:keep]
    return section


def _read(path: str, size: int = 4096) -> bytes:
    # os.open/os.read/os.close: no file object, no buffering, no decoding (a third of
    # what open().read() costs for a small /proc file).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def user_name(uid: int) -> str | None:
    """Return the name of a uid, or its number as text when it has none here."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ProcScanner:
    """Read every process from ``/proc`` (Linux), keeping names and users per process."""

    def __init__(self, proc_root: str = "/proc", *, clock_ticks: int | None = None,
                 page_bytes: int | None = None,
                 user_of: Callable[[int], str | None] = user_name,
                 keep_open: int = KEEP_OPEN) -> None:
        self.root = proc_root
        self.keep_open = keep_open
        self.hz = clock_ticks or os.sysconf("SC_CLK_TCK")
        self.page = page_bytes or os.sysconf("SC_PAGE_SIZE")
        self.user_of = user_of
        self._known: dict[Key, tuple[str, str | None]] = {}
        self._users: dict[int, str | None] = {}
        self._fds: dict[str, int] = {}  # pid -> its open stat file (see _stat)

    def _identify(self, pid: str, comm: str) -> tuple[str, str | None]:
        # Once per process: two more reads, the cost the per-period scan avoids.
        try:
            name = full_name(comm, _read(f"{self.root}/{pid}/cmdline") if
                             len(comm) >= COMM_MAX else b"")
        except OSError:
            name = comm
        try:
            uid = real_uid(_read(f"{self.root}/{pid}/status"))
        except (OSError, ValueError):
            uid = None
        if uid is None:
            return name, None
        if uid not in self._users:
            self._users[uid] = self.user_of(uid)
        return name, self._users[uid]

    def scan(self) -> list[ProcRecord]:
        records: list[ProcRecord] = []
        known: dict[Key, tuple[str, str | None]] = {}
        hz, page, prefix, previous = float(self.hz), self.page, self.root + "/", self._known
        try:
            entries = os.listdir(self.root)
        except OSError:
            return records
        # The loop runs once per process per period: plain locals, no f-strings, no
        # decoding of what is already known (~40 % cheaper than the first draft, here).
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                comm, state, ticks, threads, start, rss = parse_stat(self._stat(prefix, entry))
            except (OSError, ValueError, IndexError):
                continue  # exited between listdir and read, or not a process
            pid = int(entry)
            key = (pid, start)
            ident = previous.get(key)
            if ident is None:
                ident = self._identify(entry, comm.decode(errors="replace"))
            known[key] = ident
            records.append(ProcRecord(pid, start, _STATE.get(state, "unknown"), ticks / hz,
                                      rss * page, threads, ident[0], ident[1]))
        self._known = known  # forgets the processes that exited
        listed = set(entries)
        for entry in [e for e in self._fds if e not in listed]:  # exited since
            os.close(self._fds.pop(entry))
        return records

    def _stat(self, prefix: str, entry: str) -> bytes:
        # The stat files of up to keep_open processes stay open: a pread from offset 0
        # regenerates the text (half the cost of open + read + close, measured here). A
        # /proc/<pid> file descriptor belongs to that process, not to the number: once the
        # process is gone, reading gives ESRCH (fs/proc/base.c), even if the pid is reused.
        fd = self._fds.get(entry)
        if fd is not None:
            try:
                return os.pread(fd, 2048, 0)
            except OSError:
                os.close(self._fds.pop(entry))  # gone; a new process may have its pid
        fd = os.open(prefix + entry + "/stat", os.O_RDONLY | os.O_CLOEXEC)
        if len(self._fds) >= self.keep_open:
            try:
                return os.read(fd, 2048)
            finally:
                os.close(fd)
        self._fds[entry] = fd
        return os.pread(fd, 2048, 0)  # if the process just left: ESRCH, closed next scan

    def close(self) -> None:
        """Close the stat files kept open."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def io(self, pid: int) -> tuple[int | None, int | None]:
        """Return (read_bytes, write_bytes) of /proc/<pid>/io; None where not allowed."""
        try:
            data = _read(f"{self.root}/{pid}/io")
        except OSError:  # EACCES: another user's process and we are not root
            return (None, None)
        values: dict[bytes, int] = {}
        for line in data.splitlines():
            name, _, value = line.partition(b":")
            if value.strip().isdigit():
                values[name] = int(value)
        return (values.get(b"read_bytes"), values.get(b"write_bytes"))


class ProcessSampler:
    """Scan processes and turn two scans into CPU % (keeps the previous scan's CPU times)."""

    def __init__(self, scanner: Scanner, *, top_n: int = 10,
                 memory_total_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scanner = scanner
        self.top_n = top_n
        self.memory_total_bytes = memory_total_bytes
        self.clock = clock
        self._prev: dict[Key, float] | None = None
        self._prev_at = 0.0

    def reset(self) -> None:
        """Forget the previous scan (process metrics turned off)."""
        self._prev = None

    def scan(self) -> tuple[list[ProcRecord], list[float | None], float]:
        """Return every process, its CPU % since the previous scan, and that interval."""
        now = self.clock()
        records = self.scanner.scan()
        dt = now - self._prev_at if self._prev is not None else 0.0
        cpus = cpu_percents(self._prev, records, dt)
        self._prev = {r.key: r.cpu_s for r in records}
        self._prev_at = now
        return records, cpus, dt

    def sample(self) -> ProcessesV1:
        """Scan and return the top-N lists and the counts (CPU % None on the first call)."""
        records, cpus, dt = self.scan()
        top = select_top(records, cpus, self.top_n)
        io = {records[i].pid: self.scanner.io(records[i].pid) for i in {*top[0], *top[1]}}
        return build_processes(records, cpus, top, self.memory_total_bytes, dt, io)


class ProcessWatcher:
    """Take a process sample every ``period_s`` in its own thread; keep the latest.

    A thread, not slices of the per-second loop: one scan is a few ms of Python for a
    few hundred processes, and the per-second reading must keep its timing (the GIL is
    handed over every 5 ms at most, so the two interleave). Scans run at whole periods
    plus half a second from the start (the first, which only primes CPU %, included):
    started beside the per-second loop, which reads at whole seconds from its start, they
    fall between its readings.
    """

    def __init__(self, sampler: ProcessSampler, period_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sampler = sampler
        self.period_s = period_s  # 0: off (the thread waits for configure())
        self.clock = clock
        self.latest: ProcessesV1 | None = None
        self._unsent: ProcessesV1 | None = None  # the latest scan, until a reading takes it
        self._lock = threading.Lock()
        self.scans = 0
        self.scan_s = 0.0  # wall time of the last scan, for the debug log
        self._wake = threading.Event()

    def configure(self, period_s: float, top_n: int) -> None:
        """Use a new period (0: off) and top-N from the next scan on (settings changed
        remotely, agent/remote.py); safe to call from another thread."""
        self.sampler.top_n = top_n
        if period_s != self.period_s:
            self.period_s = period_s
            self._wake.set()

    def wake(self) -> None:
        """Make :meth:`run` look at its stop event and period now."""
        self._wake.set()

    def _wait(self, stop: threading.Event, timeout_s: float) -> bool:
        """Wait until the timeout, a new period or a wake(); return True once stopped."""
        self._wake.wait(max(0.0, timeout_s))
        self._wake.clear()
        return stop.is_set()

    def take(self) -> ProcessesV1 | None:
        """Return the latest scan if no reading has carried it yet (called by the loop)."""
        with self._lock:
            unsent, self._unsent = self._unsent, None
        return unsent

    def run(self, stop: threading.Event) -> None:
        if stop.wait(OFFSET_S):
            return
        period = 0.0  # the period the schedule below was made for; 0: not primed
        tick = 0.0
        while not stop.is_set():
            if self.period_s <= 0:  # off: forget the last result and the CPU times
                with self._lock:
                    self.latest = self._unsent = None
                period = 0.0
                self.sampler.reset()
                if self._wait(stop, IDLE_WAIT_S):
                    return
                continue
            if period == 0.0:
                period = self.period_s
                tick = self.clock() + period
                try:
                    self.sampler.scan()  # CPU % needs an earlier scan: the first result is full
                except Exception:
                    log.exception("process metrics: the first scan failed")
            elif self.period_s != period:  # changed remotely: from the last scan, anew
                tick += self.period_s - period
                period = self.period_s
            if self.clock() < tick:
                if self._wait(stop, tick - self.clock()):
                    return
                continue  # woken early: the period may have changed
            started = self.clock()
            try:
                latest = fit_section(self.sampler.sample())
                with self._lock:
                    self.latest = self._unsent = latest
            except Exception:
                log.exception("process metrics: a scan failed; trying again next period")
            self.scans += 1
            self.scan_s = self.clock() - started
            log.debug("process scan %d took %.1f ms", self.scans, 1000 * self.scan_s)
            tick += period
            if self.clock() - tick > period:  # suspended: skip, do not burst
                tick = self.clock() + period
