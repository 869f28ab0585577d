"""The rollout worker's lease sizing: as many groups as it can post before they go stale."""

from relaytrain.rollout.worker import Pace


def paced(seconds_per_version: float, seconds_per_group: float, latest: int) -> Pace:
    pace = Pace()
    pace.saw_version(latest - 1, now=0.0)
    pace.saw_version(latest, now=seconds_per_version)
    pace.generated(4, 4 * seconds_per_group)
    return pace


def test_until_both_rates_are_known_the_worker_leases_max_groups() -> None:
    pace = Pace()
    assert pace.lease_size(0, max_staleness=2, max_groups=16) == 16
    pace.saw_version(3, now=0.0)
    assert pace.lease_size(3, max_staleness=2, max_groups=16) == 16  # one sighting: no rate yet
    pace.generated(8, 4.0)
    assert pace.lease_size(3, max_staleness=2, max_groups=16) == 16
    pace.saw_version(5, now=1.0)
    assert pace.seconds_per_version == 0.5


def test_the_lease_fits_the_versions_of_headroom_left() -> None:
    pace = paced(seconds_per_version=1.0, seconds_per_group=0.1, latest=10)
    assert pace.lease_size(10, max_staleness=2, max_groups=64) == 20  # 2 versions × 1 s ÷ 0.1 s
    assert pace.lease_size(9, max_staleness=2, max_groups=64) == 10  # one version already spent
    assert pace.lease_size(8, max_staleness=2, max_groups=64) == 5  # none left: half a version
    assert pace.lease_size(10, max_staleness=2, max_groups=8) == 8  # never above max_groups


def test_a_slow_worker_next_to_a_fast_trainer_takes_one_group_at_a_time() -> None:
    pace = paced(seconds_per_version=0.1, seconds_per_group=2.0, latest=50)
    assert pace.lease_size(50, max_staleness=2, max_groups=16) == 1


def test_rates_are_moving_averages() -> None:
    pace = Pace()
    pace.generated(1, 1.0)
    pace.generated(1, 2.0)
    assert pace.seconds_per_group == (1 - Pace.SMOOTHING) * 1.0 + Pace.SMOOTHING * 2.0
    pace.saw_version(1, now=0.0)
    pace.saw_version(3, now=1.0)  # 0.5 s a version
    pace.saw_version(3, now=5.0)  # the same version again changes nothing
    pace.saw_version(4, now=2.0)  # measured from when 3 was first seen: 1 s
    assert pace.seconds_per_version == (1 - Pace.SMOOTHING) * 0.5 + Pace.SMOOTHING * 1.0
    pace.saw_version(2, now=6.0)  # an older version (another reply overtaken) is ignored
    assert pace.latest == 4
