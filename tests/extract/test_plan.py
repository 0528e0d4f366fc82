"""Clip plans: which native frames each feature is computed from, checked on hand-computed cases."""

import numpy as np
import pytest

from egolab.extract.plan import ClipPlan, rulstm_frame_number


def test_native_rate_start_anchor():
    plan = ClipPlan(fps=None, window=16, stride=4)
    clips = plan.clips(100, 30.0)
    assert clips.dtype == np.int64 and clips.shape == (22, 16)  # 1 + (100 - 16) // 4
    np.testing.assert_array_equal(clips[0], np.arange(0, 16))
    np.testing.assert_array_equal(clips[1], np.arange(4, 20))
    np.testing.assert_array_equal(clips[21], np.arange(84, 100))
    times = plan.feature_times(100, 30.0)
    assert times.dtype == np.float64 and times.shape == (22,)
    np.testing.assert_allclose(times[[0, 1, 21]], [0.0, 4 / 30, 84 / 30])


def test_half_rate_picks_every_other_frame():
    plan = ClipPlan(fps=15, window=2, stride=2)
    np.testing.assert_array_equal(plan.timeline(10, 30.0), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(plan.timeline(9, 30.0), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(plan.clips(10, 30.0), [[0, 2], [4, 6]])
    np.testing.assert_allclose(plan.feature_times(10, 30.0), [0.0, 2 / 15])


def test_upsampling_25_to_30_repeats_frames():
    # timeline frame j -> native floor(j * 25 / 30): 0,0,1,2,3,4,5,5,6,7,8,9; j = 12 would be native 10
    timeline = ClipPlan(fps=30, window=1, stride=1).timeline(10, 25.0)
    np.testing.assert_array_equal(timeline, [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9])


def test_inexact_ratio_does_not_fall_a_frame_short():
    # 29.97 -> 9.99 fps: j * 3 exactly, though 29.97 / 9.99 is not exactly 3 in floating point
    timeline = ClipPlan(fps=9.99, window=1, stride=1).timeline(30, 29.97)
    np.testing.assert_array_equal(timeline, np.arange(0, 30, 3))


def test_end_anchor_sees_only_the_past():
    plan = ClipPlan(fps=None, window=3, stride=1, anchor="end")
    clips = plan.clips(8, 30.0)
    assert clips.shape == (8, 3)
    np.testing.assert_array_equal(clips[0], [0, 0, 0])
    np.testing.assert_array_equal(clips[1], [0, 0, 1])
    np.testing.assert_array_equal(clips[2], [0, 1, 2])
    np.testing.assert_array_equal(clips[5], [3, 4, 5])
    assert (clips.max(axis=1) == np.arange(8)).all()
    np.testing.assert_allclose(plan.feature_times(8, 30.0), np.arange(8) / 30)


def test_end_anchor_with_stride_and_resampling():
    plan = ClipPlan(fps=15, window=2, stride=2, anchor="end")
    # timeline (native): 0,2,4,6,8,10; anchors t = 0, 2, 4
    np.testing.assert_array_equal(plan.clips(12, 30.0), [[0, 0], [2, 4], [6, 8]])
    np.testing.assert_allclose(plan.feature_times(12, 30.0), [0.0, 2 / 15, 4 / 15])


@pytest.mark.parametrize("anchor", ["start", "end"])
def test_empty_video(anchor):
    assert ClipPlan(fps=None, window=4, stride=1, anchor=anchor).clips(0, 30.0).shape == (0, 4)


def test_too_short_video_has_no_clip():
    plan = ClipPlan(fps=None, window=16, stride=4)
    assert plan.clips(15, 30.0).shape == (0, 16)
    assert plan.feature_times(15, 30.0).shape == (0,)
    assert plan.clips(16, 30.0).shape == (1, 16)


def test_data_config_lines():
    assert ClipPlan(fps=None, window=16, stride=4).data_config_lines(30.0) == [
        "data.dataset.default_fps=30",
        "data.dataset.feat_stride=4",
        "data.dataset.num_frames=16",
    ]
    lines = ClipPlan(fps=12.5, window=32, stride=8).data_config_lines(30.0)
    assert lines[0] == "data.dataset.default_fps=12.5"
    assert ClipPlan(fps=12.5, window=32, stride=8).data_config_lines() == lines
    assert ClipPlan(fps=None, window=16, stride=4).data_config_lines()[0] == "data.dataset.default_fps=null"
    with pytest.raises(ValueError, match="start-anchored"):
        ClipPlan(fps=30, window=8, stride=1, anchor="end").data_config_lines(30.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fps": None, "window": 0, "stride": 1}, "window"),
        ({"fps": None, "window": 1, "stride": 0}, "stride"),
        ({"fps": 0.0, "window": 1, "stride": 1}, "fps"),
        ({"fps": -30.0, "window": 1, "stride": 1}, "fps"),
        ({"fps": None, "window": 1, "stride": 1, "anchor": "middle"}, "anchor"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipPlan(**kwargs)


def test_rulstm_frame_number():
    assert rulstm_frame_number(0) == 1
    assert rulstm_frame_number(29) == 30
