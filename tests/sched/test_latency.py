"""The online latency model: fits what it measured, interpolates, extrapolates, tracks change, finds the knee."""

import pytest

from streamgen.sched import LatencyModel


def test_predicts_what_it_measured_and_interpolates_between():
    model = LatencyModel()
    for _ in range(5):
        model.observe("a", 2, 0.02)
        model.observe("a", 6, 0.06)
    assert model.predict("a", 2) == pytest.approx(0.02)
    assert model.predict("a", 4) == pytest.approx(0.04)
    assert model.predict("a", 0) == 0.0


def test_extrapolates_with_the_fitted_slope():
    model = LatencyModel()
    for rows in (1, 2, 3, 4):
        model.observe("a", rows, 0.01 + 0.005 * rows)
    assert model.predict("a", 10) == pytest.approx(0.01 + 0.005 * 10)
    assert model.predict("a", 1) == pytest.approx(0.015)


def test_tracks_a_machine_that_slows_down():
    model = LatencyModel(decay=0.3)
    for _ in range(10):
        model.observe("a", 1, 0.010)
    for _ in range(20):
        model.observe("a", 1, 0.050)
    assert model.predict("a", 1) == pytest.approx(0.050, rel=0.01)


def test_unmeasured_bucket_is_scaled_from_the_nearest_measured_one():
    work = {"256": 256 * 256, "384": 384 * 384, "512": 512 * 512, "1024": 1024 * 1024}
    model = LatencyModel(bucket_work=work.__getitem__)
    model.observe("256", 1, 0.01)
    model.observe("1024", 1, 0.5)
    assert model.predict("384", 1) == pytest.approx(0.01 * 384 * 384 / (256 * 256))  # 256 is nearer
    assert not model.measured("384")


@pytest.mark.parametrize("order", [("256", "1024"), ("1024", "256")])
def test_equally_near_buckets_give_the_costlier_estimate_whatever_was_measured_first(order):
    work = {"256": 256 * 256, "512": 512 * 512, "1024": 1024 * 1024}
    model = LatencyModel(bucket_work=work.__getitem__)
    seconds = {"256": 0.01, "1024": 0.5}
    for bucket in order:
        model.observe(bucket, 1, seconds[bucket])
    assert model.predict("512", 1) == pytest.approx(max(0.01 * 4, 0.5 / 4))  # 4x either way: the higher estimate


def test_prior_before_any_measurement():
    model = LatencyModel(default_seconds_per_row=0.02)
    assert model.predict("x", 3) == pytest.approx(0.06)


def test_knee_of_a_gpu_like_curve():
    model = LatencyModel()
    for rows in (1, 2, 4, 8, 16, 32):
        model.observe("a", rows, 0.01 * max(1, rows / 8))  # flat to 8 rows, then linear
    assert model.knee("a") == 8


def test_knee_of_a_linear_cpu_curve_is_small():
    model = LatencyModel()
    for rows in (1, 2, 4, 8):
        model.observe("a", rows, 0.001 + 0.01 * rows)
    assert model.knee("a") == 1


def test_knee_unknown_until_two_sizes_are_measured():
    model = LatencyModel()
    assert model.knee("a") is None
    model.observe("a", 4, 0.1)
    assert model.knee("a") is None


def test_ignores_nonsense_samples():
    model = LatencyModel()
    model.observe("a", 0, 1.0)
    model.observe("a", 1, float("nan"))
    model.observe("a", 1, -1.0)
    assert not model.measured("a")


def test_a_step_is_never_predicted_cheaper_than_one_of_fewer_rows():
    """Noise that measured 2 rows below 1 row must not make a loaded worker look cheaper than an idle one."""
    model = LatencyModel()
    model.observe("a", 1, 0.030)
    model.observe("a", 2, 0.025)
    assert model.predict("a", 2) == pytest.approx(0.030)
    assert model.predict("a", 1) == pytest.approx(0.030)
    assert model.predict("a", 3) >= model.predict("a", 2)


class _Prior:
    def __init__(self, model):
        self.model = model

    def measured(self, bucket):
        return self.model.measured(bucket)

    def any_measured(self):
        return self.model.any_measured()

    def predict(self, bucket, rows):
        return self.model.predict(bucket, rows)


def test_a_bucket_another_replica_measured_beats_a_scaled_guess_from_another_bucket():
    work = {"128": 128 * 128, "256": 256 * 256}
    sibling = LatencyModel(bucket_work=work.__getitem__)
    sibling.observe("128", 1, 0.031)
    own = LatencyModel(bucket_work=work.__getitem__, prior=_Prior(sibling))
    own.observe("256", 1, 0.200)  # scaled by pixels this would guess 0.05 for 128
    assert own.predict("128", 1) == pytest.approx(0.031)
    own.observe("128", 1, 0.040)  # its own measurement wins once it has one
    assert own.predict("128", 1) == pytest.approx(0.040)


def test_with_nothing_measured_itself_the_prior_guesses_before_the_default():
    work = {"128": 1.0, "256": 4.0}
    sibling = LatencyModel(bucket_work=work.__getitem__)
    sibling.observe("128", 1, 0.02)
    own = LatencyModel(bucket_work=work.__getitem__, prior=_Prior(sibling), default_seconds_per_row=1.0)
    assert own.predict("256", 1) == pytest.approx(0.08)
