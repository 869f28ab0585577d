"""The lium provider against the SDK fake (tests/support/fake_lium.py): which SDK calls it makes,
with which arguments, and how it cleans up. The fake's pods are real folders with real processes."""

from __future__ import annotations

import pytest

from relaytrain.config import LiumProviderConfig
from relaytrain.providers import ProviderError
from relaytrain.providers.lium import LiumProvider
from tests.support.fake_lium import FakeLium


def config(**fields) -> LiumProviderConfig:
    return LiumProviderConfig(**{"type": "lium", "template_id": "relay-worker", "gpu_type": "H100",
                                 "gpu_count": 1, "remote_dir": "relay", **fields})


@pytest.fixture
def sdk(tmp_path):
    return FakeLium(tmp_path)


def test_create_rents_the_cheapest_matching_executor(sdk):
    provider = LiumProvider(config(), sdk=sdk)
    machine = provider.create("stack-w-0")
    up = next(args for name, args in sdk.calls if name == "up")
    assert up == {"executor_id": "0c5e-h100-b", "name": "stack-w-0", "template_id": "relay-worker", "volume_id": None}
    assert machine.name == "stack-w-0" and machine.workdir == "relay" and machine.id in sdk.pods
    assert [p.status for p in sdk.ps()] == ["RUNNING"]


def test_executor_by_huid_volume_and_ttl(sdk):
    provider = LiumProvider(config(executor="noble-fox-c3", gpu_type=None, volume="new:name=ckpt", ttl="2h"),
                            sdk=sdk)
    provider.create("p0")
    provider.create("p1")
    ups = [args for name, args in sdk.calls if name == "up"]
    assert {u["executor_id"] for u in ups} == {"0c5e-h100x8"}
    assert [v.name for v in sdk.volume_list] == ["ckpt"], "the named volume is created once, then reused"
    assert len({u["volume_id"] for u in ups}) == 1
    assert all(p.removal_scheduled_at and p.removal_scheduled_at.endswith("Z") for p in sdk.ps())
    assert LiumProvider(config(volume="id:vol-7"), sdk=sdk)._volume_id() == "vol-7"


def test_an_existing_pod_of_that_name_is_reused(sdk):
    provider = LiumProvider(config(), sdk=sdk)
    first = provider.create("p")
    again = LiumProvider(config(), sdk=sdk).create("p")
    assert first.id == again.id and [n for n, _ in sdk.calls].count("up") == 1


def test_run_upload_remove(sdk, tmp_path):
    provider = LiumProvider(config(), sdk=sdk)
    machine = provider.create("p")
    assert provider.run(machine, "echo $HOME; exit 4").exit_code == 4
    local = tmp_path / "w.env"
    local.write_text("A=1\n")
    provider.upload(machine, local, "relay/p/worker.env")
    pod = sdk.ps()[0]
    assert (pod.root / "relay" / "p" / "worker.env").read_text() == "A=1\n"
    assert oct((pod.root / "relay" / "p" / "worker.env").stat().st_mode & 0o777) == "0o600"
    provider.remove(machine)
    assert sdk.ps() == [] and ("rm", "p") in sdk.calls
    with pytest.raises(ProviderError, match="no pod named p"):
        provider.run(machine, "true")


def test_a_pod_that_never_gets_ready_is_removed(sdk):
    sdk.never_ready = True
    with pytest.raises(ProviderError, match="not ready within 300s; removed"):
        LiumProvider(config(), sdk=sdk).create("slow")
    assert sdk.ps() == [] and ("rm", "slow") in sdk.calls


def test_no_matching_executor(sdk):
    with pytest.raises(ProviderError, match="no executor with 4 B200 is available"):
        LiumProvider(config(gpu_type="B200", gpu_count=4), sdk=sdk).create("p")
    with pytest.raises(ProviderError, match="no executor 'ghost' is available"):
        LiumProvider(config(executor="ghost"), sdk=sdk).create("p")


def test_sdk_errors_are_wrapped(sdk, tmp_path):
    provider = LiumProvider(config(), sdk=sdk)
    machine = provider.create("p")
    local = tmp_path / "f"
    local.write_text("x")
    with pytest.raises(ProviderError, match="lium: upload to p:/tmp/x failed: ValueError: /tmp/x is outside"):
        provider.upload(machine, local, "/tmp/x")
