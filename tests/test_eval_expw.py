"""``facial-search eval`` on ExpW's class triplets (``../shared/data/wild/expw/triplets_valid.csv``): the same
format as FER+'s, image names relative to the CSV's folder, and a breakdown by the labelled pair's emotion
from ExpW's ``labels.csv``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED, require_shared

from facial_search.errors import TripletFileError
from facial_search.evaluate import Triplet, evaluate, read_labels, triplet_accuracy

EXPW = SHARED / "data" / "wild" / "expw"


@pytest.fixture
def expw_subset(tmp_path) -> tuple[Path, list[dict]]:
    """The first 18 ExpW valid triplets in a CSV beside links to their images (``valid/...``, as in ExpW)."""
    require_shared()
    if not (EXPW / "triplets_valid.csv").is_file():
        pytest.skip("needs ../shared/data/wild/expw")
    with open(EXPW / "triplets_valid.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:18]
    (tmp_path / "valid").mkdir()
    for r in rows:
        for k in ("image_a", "image_b", "image_c"):
            link = tmp_path / r[k]
            if not link.exists():
                link.symlink_to(EXPW / r[k])
    sub = tmp_path / "triplets.csv"
    with open(sub, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    return sub, rows


def test_expw_triplets_with_labels_break_down_by_pair_emotion(expw_subset):
    sub, rows = expw_subset
    labels = read_labels(EXPW / "labels.csv")
    # images default to the CSV's folder, where ExpW's valid/... names are
    report = evaluate(sub, labels=EXPW / "labels.csv", cropped=True, workers=1, progress=False)
    assert report.n == 18 and set(report.per_type) == {"TWO_CLASS"}  # every triplet counts
    # the breakdown: each triplet under the emotion its labelled pair shares (ExpW: one label per face)
    expected: dict[str, int] = {}
    for r in rows:
        first, second = (labels[Path(r[f"image_{k}"]).name] for k in r["most_similar"])
        assert first == second  # ExpW's labelled pair shares its emotion
        expected[first] = expected.get(first, 0) + 1
    assert {k: n for k, (_, n) in report.per_pair_label.items()} == expected
    hits = sum(round(acc * n) for acc, n in report.per_pair_label.values())
    assert hits == round(report.overall * 18)
    assert report.lines()[-1].startswith("triplet_accuracy: ")
    assert any(line.startswith("pair ") for line in report.lines())


def test_eval_command_reads_expw_triplets(expw_subset):
    sub, _ = expw_subset
    r = subprocess.run(
        [sys.executable, "-m", "facial_search", "eval", str(sub), "--images", str(sub.parent), "--cropped",
         "--labels", str(EXPW / "labels.csv"), "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("TWO_CLASS: ") and "(n=18)" in lines[0]
    assert lines[-1].startswith("triplet_accuracy: ")
    assert sum(int(line.rsplit("(n=", 1)[1].rstrip(")")) for line in lines if line.startswith("pair ")) == 18


def test_pair_label_breakdown_counts_hits_and_mixed_pairs():
    e = {k: np.array([x, 0.0]) for k, x in {"a": 0.0, "b": 0.1, "c": 1.0, "d": 1.1}.items()}
    ts = [Triplet("a", "b", "c", "ab", "TWO_CLASS"), Triplet("c", "d", "a", "ab", "TWO_CLASS"),
          Triplet("a", "c", "b", "ab", "TWO_CLASS")]  # fmt: skip
    labels = {"a": "joy", "b": "joy", "c": "fear", "d": "fear"}
    r = triplet_accuracy(ts, e, labels)
    assert r.per_pair_label == {"joy": (1.0, 1), "fear": (1.0, 1), "joy|fear": (0.0, 1)}
    assert r.overall == pytest.approx(2 / 3)
    with pytest.raises(TripletFileError, match="'d' has no label"):
        triplet_accuracy([Triplet("c", "d", "a", "ab", "TWO_CLASS", 7)], e, {"a": "joy", "c": "fear"})


def test_labels_csv_refuses_conflicting_and_incomplete_rows(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("file,emotion\nx.jpg,anger\nx.jpg,fear\n")
    with pytest.raises(TripletFileError, match=r"labels.csv:3: 'x.jpg' labelled both 'anger' and 'fear'"):
        read_labels(p)
    p.write_text("file,emotion\nx.jpg,\n")
    with pytest.raises(TripletFileError, match=r":2: a label needs a file and an emotion"):
        read_labels(p)
    p.write_text("file,label\nx.jpg,anger\n")
    with pytest.raises(TripletFileError, match="missing column emotion"):
        read_labels(p)
