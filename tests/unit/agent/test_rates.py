from agent.rates import CoreTimes, busy_percent, cpu_percent, rate


def test_rate_divides_the_increase_by_the_interval():
    assert rate(1000, 3000, 2.0) == 1000.0


def test_rate_is_none_when_the_counter_went_backwards():
    # A reboot or a re-created interface resets the counter: no rate, never a negative one.
    assert rate(5000, 10, 1.0) is None


def test_rate_is_none_without_a_previous_value_or_interval():
    assert rate(None, 10, 1.0) is None
    assert rate(10, None, 1.0) is None
    assert rate(10, 20, 0.0) is None
    assert rate(10, 20, -1.0) is None


def test_rate_of_an_unchanged_counter_is_zero():
    assert rate(42, 42, 1.0) == 0.0


def test_busy_percent_is_busy_share_of_elapsed_cpu_time():
    assert busy_percent(CoreTimes(10, 100), CoreTimes(35, 200)) == 25.0


def test_busy_percent_is_none_when_time_did_not_advance():
    assert busy_percent(CoreTimes(10, 100), CoreTimes(10, 100)) is None


def test_cpu_percent_gives_total_and_per_core():
    prev = [CoreTimes(0, 100), CoreTimes(0, 100)]
    cur = [CoreTimes(50, 200), CoreTimes(0, 200)]
    total, per_core = cpu_percent(prev, cur)
    assert per_core == [50.0, 0.0]
    assert total == 25.0


def test_cpu_percent_needs_a_previous_reading():
    assert cpu_percent(None, [CoreTimes(1, 2)]) == (None, [])


def test_cpu_percent_is_unknown_when_cores_were_hot_plugged():
    assert cpu_percent([CoreTimes(0, 1)], [CoreTimes(0, 2), CoreTimes(0, 2)]) == (None, [])


def test_cpu_time_stepping_back_a_little_reads_as_idle_not_unknown():
    # Linux's per-CPU idle/iowait counters may go backwards slightly between two reads.
    prev = [CoreTimes(50.0, 200.0), CoreTimes(0, 100)]
    cur = [CoreTimes(49.99, 200.25), CoreTimes(10, 200)]
    total, per_core = cpu_percent(prev, cur)
    assert per_core == [0.0, 10.0]
    assert total is not None
