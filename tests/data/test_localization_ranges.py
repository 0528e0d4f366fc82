"""Adaptive regression ranges: grid mapping, point reaches, weighted quantiles, coverage, command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egolab.data.localization import main
from egolab.data.localization_ranges import (
    assigned,
    doubling_ranges,
    grid_segments,
    point_reaches,
    quantile_boundaries,
    ranges_from_boundaries,
    suggest_ranges,
)

ROOT = Path(__file__).resolve().parents[2]
# fps 4, stride 4, 4 frames per clip: grid = t * 4 / 4 - 0.5 * 4 / 4 = t - 0.5
GRID = {"fps": 4.0, "feat_stride": 4, "num_frames": 4}


def ann(start: float, end: float) -> dict:
    return {"label": "x", "segment": [start, end], "label_id": 0}


@pytest.fixture
def annotations(tmp_path) -> Path:
    """Training segments at grid [0.5, 4.5], [1.5, 3.5], [5.5, 13.5], [19.5, 19.6]; one validation segment."""
    database = {
        "a": {"subset": "Training", "fps": 4, "annotations": [ann(1.0, 5.0), ann(2.0, 4.0)]},
        "b": {"subset": "training", "fps": 4, "annotations": [ann(6.0, 14.0), ann(20.0, 20.1)]},
        "c": {"subset": "validation", "fps": 4, "annotations": [ann(0.0, 100.0)]},
    }
    path = tmp_path / "anno.json"
    path.write_text(json.dumps({"database": database}))
    return path


def test_grid_segments_match_the_dataset_mapping(annotations):
    segs = grid_segments(annotations, ["training"], **GRID)
    np.testing.assert_allclose(segs, [[0.5, 4.5], [1.5, 3.5], [5.5, 13.5], [19.5, 19.6]])
    # json fps (4) when --fps is not given; stride 2, 8 frames: t * 2 - 2
    np.testing.assert_allclose(grid_segments(annotations, ["validation"], None, 2, 8), [[-2.0, 198.0]])
    # force_upsampling to 192 steps: t * 192 / duration - 0.5
    path = annotations.with_name("resize.json")
    path.write_text(
        json.dumps(
            {"database": {"v": {"subset": "training", "duration": 96.0, "annotations": [ann(1.0, 2.0)]}}}
        )
    )
    np.testing.assert_allclose(grid_segments(path, resize_to=192), [[1.5, 3.5]])


def test_point_reaches_by_hand():
    reach, weights = point_reaches(np.array([[0.5, 4.5], [1.5, 3.5], [-2.0, 0.5], [19.5, 19.6]]))
    # [0.5, 4.5]: points 1..4 -> max(t - 0.5, 4.5 - t) = 3.5, 2.5, 2.5, 3.5; [1.5, 3.5]: points 2, 3 -> 1.5
    # [-2, 0.5]: only t = 0 (points start at 0) -> 2.0; [19.5, 19.6] holds no point
    np.testing.assert_allclose(reach, [3.5, 2.5, 2.5, 3.5, 1.5, 1.5, 2.0])
    np.testing.assert_allclose(weights, [0.25] * 4 + [0.5] * 2 + [1.0])


def test_weighted_quantiles_by_hand(annotations):
    reach, weights = point_reaches(grid_segments(annotations, **GRID))
    # [5.5, 13.5]: points 6..13 -> 7.5, 6.5, 5.5, 4.5, 4.5, 5.5, 6.5, 7.5 (weight 1/8 each). Cumulative share
    # of the 3 reachable segments: 1.5 -> 1/3, 2.5 -> 1/2, 3.5 -> 2/3, 4.5 -> 3/4, ... 7.5 -> 1
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 3), [0, 1.5, 3.5, 10000])
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 2), [0, 2.5, 10000])
    # scale_factor 1: every level one step apart at least, so the quantiles 1.5, 2.5, 4.5 stand
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 4, 1), [0, 1.5, 2.5, 4.5, 10000])
    # scale_factor 2: level 1 (stride 2) widened to [1.5, 3.5], level 2 (stride 4) to [3.5, 7.5]
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 4), [0, 1.5, 3.5, 7.5, 10000])


def test_levels_kept_a_stride_wide():
    reach, weights = np.full(4, 2.0), np.ones(4)  # tied reaches: every quantile is 2
    # level 0 [0, 2] (>= 1 wide), level 1 at least 2 wide, level 2 (stride 4) at least 4
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 4), [0, 2.0, 4.0, 8.0, 10000])
    np.testing.assert_allclose(quantile_boundaries(reach, weights, 3, scale_factor=3), [0, 2.0, 5.0, 10000])


def test_overlap_reproduces_the_release_ranges():
    bounds = [0, 4, 8, 16, 32, 64, 10000]
    epic = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 10000]]  # released EPIC / Ego4D ranges
    assert ranges_from_boundaries(bounds, 0.5) == epic
    default = [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]
    assert ranges_from_boundaries(bounds) == default == doubling_ranges(6)
    with pytest.raises(ValueError, match="overlap"):
        ranges_from_boundaries(bounds, 1.0)


def test_assignment_replay_by_hand():
    segs = np.array([[5.5, 13.5]])  # centre 9.5
    # centre sampling r = 1.5: level 0 points 9, 10 (reach 4.5); level 1 (s=2) 8, 10, 12 (5.5, 4.5, 6.5)
    assert not assigned(segs, [[0, 4], [7, 8]])[0]
    assert assigned(segs, [[0, 4], [6.5, 8]])[0]  # t = 12 at level 1
    assert assigned(segs, [[4.5, 4.5], [100, 200]])[0]  # both ends inclusive
    # without centre sampling level 0 reaches 7.5 at t = 6 and t = 13
    assert not assigned(segs, [[7, 8], [100, 200]])[0]
    assert assigned(segs, [[7, 8], [100, 200]], center_radius=0)[0]
    assert not assigned(np.array([[19.5, 19.6]]), [[0, 10000]])[0]  # no point inside


def test_assignment_replay_matches_brute_force():
    rng = np.random.default_rng(0)
    starts = rng.uniform(-3, 60, 300)
    segs = np.stack([starts, starts + rng.exponential(8, 300)], 1)
    ranges = [[0, 3], [2, 6], [5, 11], [9, 25]]
    for radius in (1.5, 0.0):
        expected = []
        for g_s, g_e in segs:
            c, hit = 0.5 * (g_s + g_e), False
            for level, (r_min, r_max) in enumerate(ranges):
                s = 2**level
                lo, hi = (max(c - radius * s, g_s), min(c + radius * s, g_e)) if radius > 0 else (g_s, g_e)
                for t in np.arange(0, 200, s):
                    reach = max(t - g_s, g_e - t)
                    hit |= bool(lo < t < hi and r_min <= reach <= r_max)
            expected.append(hit)
        np.testing.assert_array_equal(assigned(segs, ranges, 2, radius), expected)


def test_suggest_ranges_and_coverage(annotations):
    out = suggest_ranges(annotations, ["training"], num_levels=3, overlap=0.5, **GRID)
    assert out.ranges == [[0, 1.5], [0.75, 3.5], [1.75, 10000]]
    # [0.5, 4.5] at level 1 (t = 2: reach 2.5), [1.5, 3.5] at level 0 (1.5), [5.5, 13.5] at level 2 (5.5);
    # [19.5, 19.6] contains no point
    assert (out.num_segments, out.unreachable, out.coverage) == (4, 1, 0.75)
    assert out.doubling_coverage == 0.75


def test_bad_annotation_names_file_and_video(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"database": {"v9": {"subset": "training", "annotations": [ann(1, 2), ann(3, 2)]}}})
    )
    with pytest.raises(ValueError, match=r"bad\.json: video 'v9': no valid 'fps'"):
        grid_segments(path)
    with pytest.raises(ValueError, match=r"bad\.json: video 'v9', annotation 1: segment end 2 < start 3"):
        grid_segments(path, fps=30)
    with pytest.raises(ValueError, match=r"no annotated segments in subsets \['test'\]"):
        grid_segments(path, ["test"], fps=30)


def test_command_line_prints_override_lines(annotations, capsys):
    argv = [
        "ranges",
        str(annotations),
        "--levels",
        "3",
        "--fps",
        "4",
        "--feat-stride",
        "4",
        "--num-frames",
        "4",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# regression ranges from 4 segments of") and "(training)" in lines[0]
    assert lines[1] == "model.regression_range=[[0,1.5],[0.75,3.5],[1.75,10000]]"
    assert lines[2] == (
        "# coverage: 75.0% of the segments get a positive point (release doubling ranges: 75.0%); "
        "1 contain no feature point"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["ranges", str(annotations), "--subset", "test"])
    assert exit_info.value.code == 2
    assert "no annotated segments" in capsys.readouterr().err


def test_module_entry_point(annotations):
    cmd = [sys.executable, "-m", "egolab.data.localization", "ranges", str(annotations), "--overlap", "0"]
    proc = subprocess.run(
        cmd + ["--fps", "4", "--feat-stride", "4", "--num-frames", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # quantiles 1/6 ... 5/6: 1.5, 1.5, 2.5, 3.5, 5.5; level l kept >= 2**l wide: 1.5, 3.5, 7.5, 15.5, 31.5
    expected = "model.regression_range=[[0,1.5],[1.5,3.5],[3.5,7.5],[7.5,15.5],[15.5,31.5],[31.5,10000]]"
    assert expected in proc.stdout
    assert "coverage: 75.0% of the segments" in proc.stdout
