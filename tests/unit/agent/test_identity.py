"""The default device id on fake /etc, /proc and /sys trees."""

import logging
from pathlib import Path

import pytest

from agent.identity import (
    DEVICE_ID_FILE,
    default_device_id,
    device_id_from_machine_id,
    read_board_id,
    read_board_serial,
    read_permanent_mac,
)
from shared.topics import is_valid_device_id


def test_device_id_comes_from_machine_id_and_is_stable(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    first = default_device_id(tmp_path / "state", root=tmp_path)
    assert first == default_device_id(tmp_path / "other-state", root=tmp_path)
    assert first == device_id_from_machine_id("0123456789abcdef0123456789abcdef")
    assert is_valid_device_id(first)
    assert "0123456789abcdef" not in first  # the machine id itself is not revealed


def test_different_machines_get_different_ids():
    assert device_id_from_machine_id("a" * 32) != device_id_from_machine_id("b" * 32)


def test_without_machine_id_a_generated_id_is_kept_in_the_state_dir(tmp_path):
    state = tmp_path / "state"
    first = default_device_id(state, root=tmp_path / "empty-root")
    assert (state / "machine-id").exists()
    assert default_device_id(state, root=tmp_path / "empty-root") == first


# --- boards told apart, on fake /etc, /proc and /sys trees -----------------------------------

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def pi_root(root: Path, serial: str, machine_id: str = MACHINE_ID) -> Path:
    """A Raspberry Pi's files: machine id, device-tree serial (NUL-terminated), cpuinfo."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(machine_id + "\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/serial-number").write_bytes(serial.encode() + b"\0")
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nHardware\t: BCM2835\n"
                                       f"Serial\t\t: {serial}\nModel\t\t: Raspberry Pi 4\n")
    return root


def nic(root: Path, name: str, mac: str, *, physical: bool = True, assign: int = 0) -> None:
    path = root / "sys/class/net" / name
    path.mkdir(parents=True)
    (path / "address").write_text(mac + "\n")
    (path / "addr_assign_type").write_text(f"{assign}\n")
    if physical:
        (path / "device").mkdir()


def test_cloned_sd_cards_with_one_machine_id_get_different_ids(tmp_path: Path) -> None:
    a = pi_root(tmp_path / "a", "10000000a1b2c3d4")
    b = pi_root(tmp_path / "b", "10000000e5f60718")
    id_a = default_device_id(tmp_path / "state-a", root=a)
    id_b = default_device_id(tmp_path / "state-b", root=b)
    assert id_a != id_b
    assert is_valid_device_id(id_a) and is_valid_device_id(id_b)
    assert "a1b2c3d4" not in id_a and MACHINE_ID[:12] not in id_a  # neither is revealed


def test_the_pi_serial_comes_from_the_device_tree_else_from_cpuinfo(tmp_path: Path) -> None:
    root = pi_root(tmp_path / "pi", "10000000a1b2c3d4")
    assert read_board_serial(root) == "10000000a1b2c3d4"
    (root / "proc/device-tree/serial-number").unlink()
    assert read_board_serial(root) == "10000000a1b2c3d4"
    firmware = root / "sys/firmware/devicetree/base"
    firmware.mkdir(parents=True)
    (firmware / "serial-number").write_bytes(b"00000000cafe0001\0")
    assert read_board_serial(root) == "00000000cafe0001"


def test_an_all_zero_serial_is_no_serial(tmp_path: Path) -> None:
    # Some boards and VMs print a Serial of zeros: it would make every copy the same.
    root = pi_root(tmp_path / "x", "0000000000000000")
    assert read_board_serial(root) is None


def test_without_a_serial_the_lowest_permanent_physical_mac_is_used(tmp_path: Path) -> None:
    root = tmp_path / "pc"
    nic(root, "lo", "00:00:00:00:00:00", physical=False)
    nic(root, "docker0", "02:42:00:00:00:01", physical=False)  # virtual: no device link
    nic(root, "wlp2s0", "dc:a6:32:00:00:02")
    nic(root, "enp3s0", "dc:a6:32:00:00:09")
    nic(root, "usb0", "0a:00:00:00:00:01", assign=1)  # random address: not the board's
    assert read_permanent_mac(root) == "dc:a6:32:00:00:02"
    assert read_board_id(root) == "mac:dc:a6:32:00:00:02"


def test_renaming_an_interface_keeps_the_id(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    for root, names in ((before, ("eth0", "wlan0")), (after, ("enp1s0", "wlp2s0"))):
        (root / "etc").mkdir(parents=True)
        (root / "etc/machine-id").write_text(MACHINE_ID)
        nic(root, names[0], "b8:27:eb:00:00:05")
        nic(root, names[1], "b8:27:eb:00:00:06")
    assert default_device_id(tmp_path / "s1", root=before) == \
        default_device_id(tmp_path / "s2", root=after)


def test_the_id_is_chosen_once_and_kept_in_the_state_dir(tmp_path: Path) -> None:
    root = pi_root(tmp_path / "pi", "10000000a1b2c3d4")
    state = tmp_path / "state"
    first = default_device_id(state, root=root)
    assert (state / DEVICE_ID_FILE).read_text().split()[0] == first
    # A NIC added later, or /sys unreadable: the kept id stands.
    nic(root, "eth1", "00:11:22:33:44:55")
    assert default_device_id(state, root=root) == first


def test_an_upgraded_install_keeps_the_id_earlier_versions_derived(tmp_path: Path) -> None:
    root = pi_root(tmp_path / "pi", "10000000a1b2c3d4")
    state = tmp_path / "state"
    state.mkdir()  # an earlier version ran here (its spool's directory), no device-id file
    assert default_device_id(state, root=root) == device_id_from_machine_id(MACHINE_ID)
    assert default_device_id(state, root=root) == device_id_from_machine_id(MACHINE_ID)
    assert (state / DEVICE_ID_FILE).exists()


def test_a_state_dir_copied_with_the_image_to_another_board_gets_a_new_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    original = pi_root(tmp_path / "a", "10000000a1b2c3d4")
    state = tmp_path / "state"
    first = default_device_id(state, root=original)
    copy = pi_root(tmp_path / "b", "10000000e5f60718")
    with caplog.at_level(logging.WARNING):
        second = default_device_id(state, root=copy)
    assert second != first
    assert "another board" in caplog.text
    assert default_device_id(state, root=copy) == second  # and then it is kept
