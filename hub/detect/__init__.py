"""Anomaly detectors and forecasters over a device's signals; pure, numpy only.

Every detector scores ``k`` independent streams at once (a device's signals, or many series in
a benchmark): ``step(x)`` takes the ``k`` new values and returns ``k`` scores in [0, 1), from
state held in memory. Training (``fit``) only runs the same state updates over stored history;
a model (parameters + state) round-trips through bytes for storage. NaN is "no value": the
stream's state is left alone and its score is 0.
"""
