"""Netdata's k-means baseline, the NAB corpus reader and the evaluation harness, on tiny data."""

import json

import numpy as np
import pytest

from bench import anomaly_baselines as ab
from bench.nab import corpus, evaluate
from hub.detect.gaussian import WindowedGaussian


def test_features_are_smoothed_diff_and_five_lags_from_the_past_only():
    x = np.array([0.0, 3.0, 6.0, 9.0, 30.0, 33.0, 36.0, 39.0, 42.0, 45.0])
    f = ab.features(x)
    assert f.shape == (10, 6)
    # sample 6: diffs 3 (5), 21 (4), 3 (6) -> 3-sample mean (21 + 3 + 3) / 3 = 9
    assert f[6, 0] == pytest.approx(9.0)
    assert f[7, 1] == pytest.approx(f[6, 0])  # lag 1 is the previous row's value
    changed = x.copy()
    changed[8:] = 1000.0
    np.testing.assert_array_equal(ab.features(changed)[:8], f[:8])


def test_kmeans2_finds_two_clusters():
    rng = np.random.default_rng(0)
    data = np.r_[rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))]
    centres = ab.kmeans2(data)
    assert sorted(np.round(centres[:, 0])) == [0.0, 5.0]


def test_netdata_flags_a_spike_and_never_looks_ahead():
    x = np.random.default_rng(1).normal(10, 1, 1200)
    x[900] = 40.0
    s = ab.netdata(x, window=400, every=100, models=3, first=150)
    # The spike stays in the 5 lags (and the smoothing) for a few rows: the top is among them.
    assert s[900] >= 1.0 and s[900:908].max() == s[850:].max()
    assert (s[:150] == 0).all()
    later = x.copy()
    later[1000:] += 100.0
    np.testing.assert_array_equal(ab.netdata(later, window=400, every=100, models=3)[:1000],
                                  s[:1000])


def _tiny_corpus(root):
    (root / "data" / "g").mkdir(parents=True)
    (root / "labels").mkdir()
    t = np.arange("2020-01-01T00:00", "2020-01-01T10:00", 5, dtype="datetime64[m]")
    values = np.random.default_rng(2).normal(0, 1, len(t))
    values[100] = 50.0
    lines = ["timestamp,value"] + [f"{str(s).replace('T', ' ')}:00,{v}"
                                   for s, v in zip(t, values, strict=True)]
    (root / "data" / "g" / "a.csv").write_text("\n".join(lines) + "\n")
    windows = {"g/a.csv": [[f"{str(t[95]).replace('T', ' ')}:00.000000",
                            f"{str(t[105]).replace('T', ' ')}:00.000000"]]}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_corpus_reads_windows_as_rows_and_harness_scores_a_detector(tmp_path):
    _tiny_corpus(tmp_path)
    series = corpus.load(tmp_path)
    assert [s.name for s in series] == ["g/a.csv"]
    assert series[0].labels.windows == ((95, 105),)
    scores, _ = evaluate.run_streaming(lambda k: WindowedGaussian(k, window=50), series)
    result = evaluate.evaluate(scores, series)["standard"]
    assert result["detected"] == 1 and result["false_positives"] == 0
    # Detected at row 100 of window 95-105: reward tanh(2.5 * 6 / 11) / tanh(2.5); the null
    # detector scores -1, the perfect one +1.
    reward = np.tanh(2.5 * 6 / 11) / np.tanh(2.5)
    assert result["score"] == pytest.approx(100 * (reward + 1) / 2)


def test_missing_corpus_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(corpus.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as exc:
        corpus.find_corpus()
    assert "FLEETPULSE_NAB_DIR" in str(exc.value) and "\n" not in str(exc.value)


def test_split_alternates_files_within_each_group(tmp_path):
    class S:
        def __init__(self, name):
            self.group = name.split("/")[0]

    names = ["a/1", "a/2", "a/3", "b/1", "b/2"]
    tune, test = evaluate.split([S(n) for n in names])
    assert tune == [0, 2, 3] and test == [1, 4]
