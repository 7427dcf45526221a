from pathlib import Path

import pytest

from agent.pi import (
    ThrottleReader,
    decode_throttled,
    find_throttled_file,
    parse_throttled,
    read_model,
)


def test_decode_throttled_0x50005_is_under_voltage_and_throttled_now_and_since_boot():
    flags = decode_throttled(0x50005)
    assert flags["raw"] == 0x50005
    assert flags["under_voltage_now"] is True
    assert flags["throttled_now"] is True
    assert flags["freq_capped_now"] is False
    assert flags["soft_temp_limit_now"] is False
    assert flags["under_voltage_occurred"] is True
    assert flags["throttled_occurred"] is True
    assert flags["freq_capped_occurred"] is False
    assert flags["soft_temp_limit_occurred"] is False


@pytest.mark.parametrize(("bit", "name"), [
    (0, "under_voltage_now"), (1, "freq_capped_now"), (2, "throttled_now"),
    (3, "soft_temp_limit_now"), (16, "under_voltage_occurred"), (17, "freq_capped_occurred"),
    (18, "throttled_occurred"), (19, "soft_temp_limit_occurred")])
def test_each_throttled_bit_sets_exactly_its_own_flag(bit, name):
    flags = decode_throttled(1 << bit)
    assert [k for k, v in flags.items() if v is True] == [name]


def test_decode_throttled_zero_is_all_clear_and_none_is_all_unknown():
    clear = decode_throttled(0)
    assert clear["raw"] == 0 and not any(v for k, v in clear.items() if k != "raw")
    assert all(v is None for v in decode_throttled(None).values())


@pytest.mark.parametrize(("text", "value"), [
    ("throttled=0x50005\n", 0x50005), ("50005\n", 0x50005), ("0x0", 0), ("0\n", 0),
    ("throttled=0x80000", 0x80000), ("garbage!", None), ("", None)])
def test_parse_throttled_reads_vcgencmd_and_sysfs_forms(text, value):
    assert parse_throttled(text) == value


def _fake_firmware(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_throttle_reader_reads_the_sysfs_file_each_time(tmp_path):
    path = _fake_firmware(tmp_path, "devices/platform/soc/soc:firmware/get_throttled", "0\n")
    reader = ThrottleReader(tmp_path, vcgencmd=None)
    assert reader.read() == 0
    path.write_text("50005\n")
    assert reader.read() == 0x50005


def test_throttled_file_is_found_under_other_firmware_nodes(tmp_path):
    path = _fake_firmware(tmp_path, "devices/platform/axi/axi:firmware/get_throttled", "4\n")
    assert find_throttled_file(tmp_path) == path


def test_no_firmware_and_no_vcgencmd_gives_none(tmp_path):
    reader = ThrottleReader(tmp_path, vcgencmd=None)
    reader._vcgencmd = None  # even if this machine had vcgencmd on PATH
    assert reader.read() is None


def test_throttle_reader_falls_back_to_vcgencmd(tmp_path):
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\necho throttled=0x20002\n")
    script.chmod(0o755)
    reader = ThrottleReader(tmp_path / "sys", vcgencmd=str(script))
    assert reader.read() == 0x20002


def test_read_model_strips_the_device_tree_nul(tmp_path):
    _fake_firmware(tmp_path, "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    assert read_model(tmp_path) == "Raspberry Pi 4 Model B Rev 1.4"
    assert read_model(tmp_path / "nothing") is None


def test_a_reader_with_neither_firmware_file_nor_vcgencmd_has_nothing_to_read(tmp_path):
    reader = ThrottleReader(tmp_path, vcgencmd=None)
    reader._vcgencmd = None  # even if this machine had vcgencmd on PATH
    assert not reader.available
    _fake_firmware(tmp_path, "devices/platform/soc/soc:firmware/get_throttled", "0\n")
    assert ThrottleReader(tmp_path, vcgencmd=None).available


def test_an_unreadable_throttled_file_gives_none_and_is_opened_again_next_time(tmp_path):
    path = _fake_firmware(tmp_path, "devices/platform/soc/soc:firmware/get_throttled", "4\n")
    reader = ThrottleReader(tmp_path, vcgencmd=None)
    path.unlink()
    path.mkdir()  # opens, but cannot be read
    assert reader.read() is None
    path.rmdir()
    path.write_text("50005\n")
    assert reader.read() == 0x50005
