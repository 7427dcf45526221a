from agent.main import next_tick


def test_ticks_do_not_drift_when_work_takes_time():
    tick = 100.0
    for _ in range(10):
        tick = next_tick(tick, 1.0, now=tick + 0.3)  # each iteration's work took 0.3 s
    assert tick == 110.0


def test_a_long_stall_gives_one_reading_now_then_the_schedule_resumes():
    now = 105.5  # suspended for five seconds after the tick at 100
    tick = next_tick(100.0, 1.0, now=now)
    assert now - 1.0 < tick <= now  # due at once: one reading, not five in a burst
    assert next_tick(tick, 1.0, now=now) > now
