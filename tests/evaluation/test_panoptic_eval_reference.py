"""Our PQ / SQ / RQ against the COCO panoptic API's own numbers on a deterministic set.

``tests/fixtures/panopticapi/expected.json`` holds what panopticapi's ``pq_compute`` returned on the set
of ``tests/helpers/panoptic_reference_set.py`` (recorded by ``tests/fixtures/panopticapi/record.py``; panopticapi
is not on PyPI and does not run in CI). The set has void pixels, crowd regions, wrong-category, missed and
spurious segments, and predictions that panopticapi ignores (mostly on void or on a crowd region).
"""
import json
import math

import pytest

from tests.helpers.panoptic_reference_set import CATEGORIES, fingerprint, make_reference_set
from blendmask.evaluation.panoptic_eval import PQStats, match_panoptic_image, pq_summary
from tests.helpers.paths import FIXTURES

EXPECTED = json.loads((FIXTURES / "panopticapi" / "expected.json").read_text())
CATS = {c["id"]: c for c in CATEGORIES}


@pytest.fixture(scope="module")
def reference_set():
    images = make_reference_set(seed=EXPECTED["seed"], num_images=EXPECTED["images"])
    assert fingerprint(images) == EXPECTED["fingerprint"], (
        "the reference set changed: re-record tests/fixtures/panopticapi/expected.json (see its README)")
    return images


@pytest.fixture(scope="module")
def ours(reference_set):
    stats = PQStats()
    for image in reference_set:
        stats += match_panoptic_image(image["gt_ids"], image["gt_segments"], image["pred_ids"],
                                      image["pred_segments"], CATS, where=f"image id {image['image_id']}")
    return stats, pq_summary(stats, CATS)


def test_the_set_exercises_void_crowd_and_ignored_predictions(reference_set, ours):
    assert sum(s["iscrowd"] for i in reference_set for s in i["gt_segments"]) >= 3
    assert all((i["gt_ids"] == 0).any() for i in reference_set)
    counts = EXPECTED["counts"]
    predicted = sum(len(i["pred_segments"]) for i in reference_set)
    judged = sum(c["tp"] + c["fp"] for c in counts.values())
    assert predicted - judged >= 5  # predictions panopticapi ignores (void / crowd)
    assert all(counts[n]["tp"] and counts[n]["fp"] and counts[n]["fn"] for n in ("disc", "box", "sky", "ground"))


@pytest.mark.parametrize("row", ["All", "Things", "Stuff"])
def test_summary_rows_equal_panopticapi(ours, row):
    _, summary = ours
    expected = EXPECTED["summary"][row]
    assert summary[row]["N"] == expected["n"]
    for ours_key, ref_key in (("PQ", "pq"), ("SQ", "sq"), ("RQ", "rq")):
        assert summary[row][ours_key] == pytest.approx(expected[ref_key], rel=1e-12, abs=1e-15)


def test_per_category_values_and_counts_equal_panopticapi(ours):
    stats, summary = ours
    for cat in CATEGORIES:
        name = cat["name"]
        counts, expected = EXPECTED["counts"][name], EXPECTED["per_category"][name]
        got = stats.per_category.get(cat["id"], {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        assert (got["tp"], got["fp"], got["fn"]) == (counts["tp"], counts["fp"], counts["fn"]), name
        assert got["iou"] == pytest.approx(counts["iou"], rel=1e-12, abs=1e-15), name
        values = summary["per_category"][name]
        if counts["tp"] + counts["fp"] + counts["fn"] == 0:
            # panopticapi reports 0.0 for a category with no segments; we report nan (both leave it out)
            assert all(math.isnan(values[k]) for k in ("PQ", "SQ", "RQ")) and expected == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        for ours_key, ref_key in (("PQ", "pq"), ("SQ", "sq"), ("RQ", "rq")):
            assert values[ours_key] == pytest.approx(expected[ref_key], rel=1e-12, abs=1e-15), (name, ours_key)

