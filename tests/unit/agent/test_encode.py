"""build_metrics is pure: synthetic samples in, a message valid against the schema out."""

from dataclasses import replace
from datetime import datetime, timezone
from typing import get_type_hints

import orjson
from pydantic import TypeAdapter

from agent.collect import Sample, StaticFacts
from agent.encode import (
    DISK_FIELDS,
    NET_FIELDS,
    build_meta,
    build_metrics,
    encode,
    pick_celsius,
    utc_ms,
)
from agent.rates import CoreTimes
from shared.schema import DiskCounters, Meta, MetricsV1, NetCounters

METRICS = TypeAdapter(MetricsV1)

MEMORY = {"total_bytes": 100, "available_bytes": 60, "used_bytes": 40, "free_bytes": 50,
          "percent": 40.0, "swap_total_bytes": 10, "swap_used_bytes": 0, "swap_free_bytes": 10,
          "swap_percent": 0.0, "swap_in_bytes": 0, "swap_out_bytes": 0}


def sample(t: float, **changes) -> Sample:
    base = Sample(
        monotonic_s=t, core_times=[CoreTimes(0, 100)], freq_mhz=(1500.0, 600.0, 1800.0),
        ctx_switches=1000, interrupts=500, soft_interrupts=200, syscalls=None,
        load=(1.0, 0.5, 0.25), memory=dict(MEMORY), partitions=[],
        disk_io={"sda": (1, 2, 1000, 2000)},
        net_io={"lo": (5000, 5000, 50, 50, 0, 0, 0, 0), "eth0": (100, 200, 1, 2, 0, 0, 0, 0)},
        temperatures=[], battery=(None, None, None), throttled_raw=None)
    return replace(base, **changes)


def build(prev, cur, seq=1):
    return build_metrics(prev, cur, device_id="pi-1", session_id="s1", seq=seq,
                         epoch_s=1_700_000_000.1234, interval_s=1.0)


def test_first_reading_has_null_rates_and_null_cpu_percent():
    m = build(None, sample(10.0))
    METRICS.validate_python(m)
    assert m["cpu"]["percent"] is None and m["cpu"]["per_core_percent"] == []
    assert m["cpu"]["ctx_switches"] == 1000 and m["cpu"]["ctx_switches_per_s"] is None
    assert m["disk"]["read_bytes_per_s"] is None
    assert m["network"]["bytes_sent_per_s"] is None


def test_rates_are_per_second_over_the_real_interval():
    prev = sample(10.0)
    cur = sample(12.0, ctx_switches=1100, disk_io={"sda": (1, 2, 5000, 2000)},
                 core_times=[CoreTimes(50, 200)])
    m = build(prev, cur)
    assert m["cpu"]["ctx_switches_per_s"] == 50.0
    assert m["disk"]["read_bytes_per_s"] == 2000.0
    assert m["disk"]["per_disk"][0]["read_bytes_per_s"] == 2000.0
    assert m["cpu"]["percent"] == 50.0


def test_counter_reset_gives_null_rate_not_negative():
    prev = sample(10.0, net_io={"eth0": (10_000, 10_000, 10, 10, 0, 0, 0, 0)})
    cur = sample(11.0, net_io={"eth0": (5, 7, 1, 1, 0, 0, 0, 0)})  # interface re-created
    m = build(prev, cur)
    assert m["network"]["bytes_sent"] == 5
    assert m["network"]["bytes_sent_per_s"] is None
    assert m["network"]["per_interface"][0]["bytes_recv_per_s"] is None


def test_network_totals_leave_out_loopback():
    m = build(sample(1.0), sample(2.0))
    assert m["network"]["bytes_sent"] == 100
    assert {i["name"] for i in m["network"]["per_interface"]} == {"lo", "eth0"}


def test_a_disk_that_appears_is_not_a_burst_of_io():
    prev = sample(1.0)
    cur = sample(2.0, disk_io={"sda": (1, 2, 1000, 2000), "sdb": (9, 9, 10**9, 10**9)})
    m = build(prev, cur)
    assert m["disk"]["read_bytes_per_s"] == 0.0  # only disks present in both readings
    assert m["disk"]["read_bytes"] == 1000 + 10**9  # the cumulative total has all disks
    sdb = next(d for d in m["disk"]["per_disk"] if d["name"] == "sdb")
    assert sdb["read_bytes_per_s"] is None


def test_swap_in_and_out_rates():
    prev = sample(1.0)
    cur = sample(3.0, memory={**MEMORY, "swap_in_bytes": 4096, "swap_out_bytes": 8192})
    m = build(prev, cur)
    assert m["memory"]["swap_in_bytes_per_s"] == 2048.0
    assert m["memory"]["swap_out_bytes_per_s"] == 4096.0


def test_throttling_is_decoded_into_the_message():
    m = build(sample(1.0), sample(2.0, throttled_raw=0x50005))
    assert m["throttling"]["raw"] == 0x50005
    assert m["throttling"]["under_voltage_now"] is True
    assert m["throttling"]["throttled_occurred"] is True


def test_timestamp_is_utc_with_millisecond_precision():
    assert utc_ms(1_700_000_000.1239) == datetime(2023, 11, 14, 22, 13, 20, 123000,
                                                  tzinfo=timezone.utc)
    wire = orjson.loads(encode(build(None, sample(1.0))))
    assert wire["ts"].endswith("Z")


def test_every_encoded_message_is_valid_against_the_schema():
    m = build(sample(1.0), sample(2.0, temperatures=[
        {"sensor": "coretemp", "label": "Core 0", "celsius": 40.0},
        {"sensor": "coretemp", "label": "Package id 0", "celsius": 45.0}]), seq=7)
    parsed = METRICS.validate_json(encode(m))
    assert parsed["seq"] == 7
    assert parsed["sensors"]["cpu_celsius"] == 45.0  # the package sensor, not core 0


def test_pick_celsius_prefers_the_first_known_sensor():
    temps = [{"sensor": "acpitz", "label": "", "celsius": 30.0},
             {"sensor": "k10temp", "label": "Tctl", "celsius": 55.0}]
    assert pick_celsius(temps, ("k10temp", "acpitz")) == 55.0
    assert pick_celsius(temps, ("nouveau",)) is None


def test_meta_is_valid_and_carries_spool_counters():
    facts = StaticFacts("pi", "Raspberry Pi OS", "6.6", "aarch64", "Raspberry Pi 4", 4, 4, 10**9)
    meta = build_meta(facts, device_id="pi-1", session_id="s1", interval_s=1.0,
                      spool_readings=3, spool_dropped=2)
    parsed = TypeAdapter(Meta).validate_json(encode(meta))
    assert parsed["spool_dropped"] == 2 and parsed["pi_model"] == "Raspberry Pi 4"


def test_counter_blocks_carry_the_schema_fields_in_field_order():
    m = build(sample(1.0), sample(2.0))
    disk = [key for name in DISK_FIELDS for key in (name, name + "_per_s")]
    net = [key for name in NET_FIELDS for key in (name, name + "_per_s")]
    assert list(m["disk"]) == [*disk, "partitions", "per_disk"]
    assert list(m["disk"]["per_disk"][0]) == ["name", *disk]
    assert list(m["network"]) == [*net, "per_interface"]
    assert list(m["network"]["per_interface"][0]) == ["name", *net]
    assert set(disk) == set(get_type_hints(DiskCounters))
    assert set(net) == set(get_type_hints(NetCounters))


def test_no_disks_or_interfaces_give_null_totals():
    lo = {"lo": (1, 1, 1, 1, 0, 0, 0, 0)}
    m = build(sample(1.0, net_io=lo), sample(2.0, disk_io={}, net_io=lo))
    METRICS.validate_python(m)
    assert m["disk"]["read_bytes"] is None and m["disk"]["read_bytes_per_s"] is None
    assert m["disk"]["per_disk"] == []
    assert m["network"]["bytes_sent"] is None  # loopback only: nothing external
    assert m["network"]["per_interface"][0]["bytes_sent_per_s"] == 0.0


def test_an_interface_that_appears_counts_in_totals_but_not_in_their_rates():
    prev = sample(1.0, net_io={"eth0": (100, 200, 1, 2, 0, 0, 0, 0)})
    cur = sample(2.0, net_io={"eth0": (150, 260, 2, 3, 0, 0, 0, 0),
                              "wlan0": (10**6, 10**6, 10, 10, 0, 0, 0, 0)})
    m = build(prev, cur)
    assert m["network"]["bytes_sent"] == 150 + 10**6
    assert m["network"]["bytes_sent_per_s"] == 50.0
    assert m["network"]["errors_in_per_s"] == 0.0


def test_a_zero_or_negative_interval_gives_null_rates():
    m = build(sample(2.0), sample(2.0, ctx_switches=2000))
    assert m["cpu"]["ctx_switches_per_s"] is None
    assert m["disk"]["read_bytes_per_s"] is None
    assert m["network"]["per_interface"][0]["bytes_sent_per_s"] is None
