"""The lium provider against the SDK fake (tests/support/fake_lium.py): which SDK calls it makes,
with which arguments, and how it cleans up. Running commands in a pod starts real processes:
those cases are in tests/integration/test_providers_processes.py."""

from __future__ import annotations

import pytest

from relaytrain.providers import ProviderError
from relaytrain.providers.lium import LiumProvider
from tests.support.fake_lium import FakeLium, lium_config


@pytest.fixture
def sdk(tmp_path):
    return FakeLium(tmp_path)


def test_create_rents_the_cheapest_matching_executor(sdk):
    provider = LiumProvider(lium_config(), sdk=sdk)
    machine = provider.create("stack-w-0")
    up = next(args for name, args in sdk.calls if name == "up")
    assert up == {"executor_id": "0c5e-h100-b", "name": "stack-w-0", "template_id": "relay-worker", "volume_id": None}
    assert machine.name == "stack-w-0" and machine.workdir == "relay" and machine.id in sdk.pods
    assert [p.status for p in sdk.ps()] == ["RUNNING"]


def test_executor_by_huid_volume_and_ttl(sdk):
    provider = LiumProvider(lium_config(executor="noble-fox-c3", gpu_type=None, volume="new:name=ckpt", ttl="2h"),
                            sdk=sdk)
    provider.create("p0")
    provider.create("p1")
    ups = [args for name, args in sdk.calls if name == "up"]
    assert {u["executor_id"] for u in ups} == {"0c5e-h100x8"}
    assert [v.name for v in sdk.volume_list] == ["ckpt"], "the named volume is created once, then reused"
    assert len({u["volume_id"] for u in ups}) == 1
    assert all(p.removal_scheduled_at and p.removal_scheduled_at.endswith("Z") for p in sdk.ps())
    assert LiumProvider(lium_config(volume="id:vol-7"), sdk=sdk)._volume_id() == "vol-7"


def test_an_existing_pod_of_that_name_is_reused(sdk):
    provider = LiumProvider(lium_config(), sdk=sdk)
    first = provider.create("p")
    again = LiumProvider(lium_config(), sdk=sdk).create("p")
    assert first.id == again.id and [n for n, _ in sdk.calls].count("up") == 1


def test_a_pod_that_never_gets_ready_is_removed(sdk):
    sdk.never_ready = True
    with pytest.raises(ProviderError, match="not ready within 300s; removed"):
        LiumProvider(lium_config(), sdk=sdk).create("slow")
    assert sdk.ps() == [] and ("rm", "slow") in sdk.calls


def test_no_matching_executor(sdk):
    with pytest.raises(ProviderError, match="no executor with 4 B200 is available"):
        LiumProvider(lium_config(gpu_type="B200", gpu_count=4), sdk=sdk).create("p")
    with pytest.raises(ProviderError, match="no executor 'ghost' is available"):
        LiumProvider(lium_config(executor="ghost"), sdk=sdk).create("p")
