"""tools/testbed.py's CPU quotas: the cgroup v2 (cpu.max) and v1 (cpu.cfs_quota_us) layouts, and what it says
when neither can be used. The hierarchies here are folders laid out as the kernel lays them out; the quota test
in test_devices_ssh.py checks on the real controller that a quota slows a device by its ratio."""

from __future__ import annotations

import pytest
from testbed_fixtures import _testbed_module

tb = _testbed_module()


def _mounts(tmp_path, *lines):
    path = tmp_path / f"mounts{len(list(tmp_path.glob('mounts*')))}"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _v2_root(tmp_path, controllers="cpuset cpu io memory pids"):
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_cgroup_v2_quota_is_written_to_cpu_max_after_enabling_the_controller(tmp_path):
    root = _v2_root(tmp_path)
    quotas, why = tb.CpuQuotas.find(_mounts(tmp_path, f"cgroup2 {root} cgroup2 rw,nosuid 0 0"))
    assert quotas is not None, why
    assert (quotas.version, quotas.root) == (2, root)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    group = quotas.create("edgenas-testbed-x-tb2", 50)
    assert (group / "cpu.max").read_text() == f"{tb.CGROUP_PERIOD_US // 2} {tb.CGROUP_PERIOD_US}"


def test_cgroup_v1_quota_is_written_to_cfs_files(tmp_path):
    root = tmp_path / "cpu,cpuacct"
    root.mkdir()
    quotas, why = tb.CpuQuotas.find(_mounts(tmp_path, f"cgroup {root} cgroup rw,nosuid,cpu,cpuacct 0 0"))
    assert quotas is not None, why
    group = quotas.create("g", 25)
    assert (group / "cpu.cfs_period_us").read_text() == str(tb.CGROUP_PERIOD_US)
    assert (group / "cpu.cfs_quota_us").read_text() == str(tb.CGROUP_PERIOD_US // 4)


def test_v2_is_preferred_and_a_v2_without_cpu_falls_back_to_v1(tmp_path):
    v1 = tmp_path / "cpu"
    v1.mkdir()
    no_cpu = _v2_root(tmp_path, controllers="memory pids")
    quotas, _ = tb.CpuQuotas.find(_mounts(tmp_path, f"cgroup2 {no_cpu} cgroup2 rw 0 0",
                                          f"cgroup {v1} cgroup rw,cpu,cpuacct 0 0"))
    assert (quotas.version, quotas.root) == (1, v1)


def test_no_usable_controller_says_why_and_up_refuses_a_quota(tmp_path, monkeypatch):
    no_cpu = _v2_root(tmp_path, controllers="memory pids")
    mounts = _mounts(tmp_path, f"cgroup2 {no_cpu} cgroup2 rw 0 0", "proc /proc proc rw 0 0")
    quotas, why = tb.CpuQuotas.find(mounts)
    assert quotas is None
    assert "no cpu controller" in why and str(no_cpu) in why
    assert tb.CpuQuotas.find(_mounts(tmp_path, "proc /proc proc rw 0 0")) == (None, "no cgroup filesystem is mounted")
    if tb.Testbed.missing():
        pytest.skip(tb.Testbed.missing())
    monkeypatch.setattr(tb, "MOUNTS", mounts)
    with pytest.raises(tb.TestbedError, match="CPU quotas cannot be applied: .*no cpu controller"):
        tb.Testbed.up(tmp_path / "bed", [tb.DeviceSpec.parse("quota=50")])
    assert not (tmp_path / "bed" / tb.STATE_FILE).exists()



def test_up_again_in_a_folder_an_earlier_down_left(tmp_path):
    # `down` keeps the files for inspection; the next `up` there makes each device a new host key
    if tb.Testbed.missing():
        pytest.skip(tb.Testbed.missing())
    out = tmp_path / "bed"
    tb.Testbed.up(out, [tb.DeviceSpec()]).down()
    old_key = (out / "tb1" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    bed = tb.Testbed.up(out, [tb.DeviceSpec()])
    try:
        assert [row["alive"] for row in bed.status()] == [True]
        new_key = (out / "tb1" / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert new_key != old_key
        assert bed.known_hosts.read_text().split()[-1] == new_key
    finally:
        bed.down()


def test_a_spec_sets_the_fast_runs_a_window_waits_for():
    """`fast_runs` becomes the device file's [measure] min_fast_runs (tests' testbeds: 0 unless they name it)."""
    assert tb.DeviceSpec().fast_runs == 30 and tb.DeviceSpec.parse("quota=50,fast_runs=0").fast_runs == 0
    for bad in ("fast_runs=-1", "fast_runs=x"):
        with pytest.raises(ValueError, match="fast_runs"):
            tb.DeviceSpec.parse(bad)
