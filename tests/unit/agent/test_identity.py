from agent.identity import default_device_id, device_id_from_machine_id
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
