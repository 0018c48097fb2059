"""PQ / SQ / RQ on hand-made cases whose values follow from the COCO panoptic definitions."""
import math

import numpy as np
import pytest

from blendmask.evaluation.panoptic_eval import PQStats, format_pq_table, match_panoptic_image, pq_summary

CATS = {1: {"name": "disc", "isthing": True}, 2: {"name": "sky", "isthing": False},
        3: {"name": "box", "isthing": True}}


def _summary(*images):
    stats = PQStats()
    for gt, gt_segs, pred, pred_segs in images:
        stats += match_panoptic_image(np.array(gt), gt_segs, np.array(pred), pred_segs, CATS)
    return pq_summary(stats, CATS)


def test_matches_give_iou_sums_and_stuff_and_things_are_averaged_apart():
    gt = [[1, 1, 2, 2]] * 4  # thing 1: 8 px, stuff 2: 8 px
    pred = [[10, 10, 10, 20], [10, 10, 20, 20], [10, 10, 20, 20], [10, 10, 20, 20]]  # thing 9 px, stuff 7 px
    m = _summary((gt, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}],
                  pred, [{"id": 10, "category_id": 1}, {"id": 20, "category_id": 2}]))
    assert m["Things"]["PQ"] == pytest.approx(8 / 9) and m["Things"]["N"] == 1  # box has no segments: left out
    assert m["Stuff"]["PQ"] == pytest.approx(7 / 8)
    assert m["All"]["PQ"] == pytest.approx((8 / 9 + 7 / 8) / 2) and m["All"]["N"] == 2
    assert m["All"]["RQ"] == 1.0 and m["All"]["SQ"] == pytest.approx(m["All"]["PQ"])
    assert math.isnan(m["per_category"]["box"]["PQ"])


def test_iou_of_exactly_one_half_does_not_match():
    gt = [[1, 1, 1, 1], [0, 0, 0, 0]]
    pred = [[5, 5, 0, 0], [0, 0, 0, 0]]  # IoU 2/4
    m = _summary((gt, [{"id": 1, "category_id": 1}], pred, [{"id": 5, "category_id": 1}]))
    disc = m["per_category"]["disc"]
    assert (disc["TP"], disc["FP"], disc["FN"]) == (0, 1, 1)
    assert m["All"]["PQ"] == 0.0 and m["All"]["SQ"] == 0.0 and m["All"]["RQ"] == 0.0


def test_predicted_pixels_on_void_leave_the_union():
    gt = [[1, 1, 0, 0], [1, 1, 0, 0]]
    pred = [[7, 7, 7, 7], [7, 7, 7, 7]]  # 4 px on the segment, 4 on void
    m = _summary((gt, [{"id": 1, "category_id": 1}], pred, [{"id": 7, "category_id": 1}]))
    assert m["per_category"]["disc"]["TP"] == 1 and m["All"]["PQ"] == pytest.approx(1.0)


def test_crowd_regions_neither_match_nor_count_as_missed_and_absorb_predictions():
    # gt: crowd disc region (id 9, 6 px), and a non-crowd disc (id 1, 2 px)
    gt = [[9, 9, 9, 1], [9, 9, 9, 1], [2, 2, 2, 2]]
    gt_segs = [{"id": 9, "category_id": 1, "iscrowd": 1}, {"id": 1, "category_id": 1, "iscrowd": 0},
               {"id": 2, "category_id": 2}]
    # pred 4: 5 px, 4 of them on the crowd region (ignored); pred 5 covers the disc exactly
    pred = [[4, 4, 4, 5], [4, 4, 2, 5], [2, 2, 2, 2]]
    pred_segs = [{"id": 4, "category_id": 1}, {"id": 5, "category_id": 1}, {"id": 2, "category_id": 2}]
    m = _summary((gt, gt_segs, pred, pred_segs))
    disc = m["per_category"]["disc"]
    assert (disc["TP"], disc["FP"], disc["FN"]) == (1, 0, 0)
    # the same prediction as another category gets no crowd shelter: a FP
    m = _summary((gt, gt_segs, pred, [{"id": 4, "category_id": 3}, *pred_segs[1:]]))
    assert m["per_category"]["box"]["FP"] == 1 and m["per_category"]["disc"]["FN"] == 0


def test_category_mismatch_is_a_miss_and_a_false_positive():
    gt = [[1, 1], [1, 1]]
    pred = [[3, 3], [3, 3]]
    m = _summary((gt, [{"id": 1, "category_id": 1}], pred, [{"id": 3, "category_id": 3}]))
    assert m["per_category"]["disc"]["FN"] == 1 and m["per_category"]["box"]["FP"] == 1
    assert m["Things"]["PQ"] == 0.0 and m["Things"]["N"] == 2


def test_counts_accumulate_over_images_before_the_ratio():
    image_a = ([[1, 1, 1, 1, 1]], [{"id": 1, "category_id": 1}], [[1, 1, 1, 1, 0]], [{"id": 1, "category_id": 1}])
    image_b = ([[1, 1]], [{"id": 1, "category_id": 1}], [[0, 0]], [])
    m = _summary(image_a, image_b)
    assert m["per_category"]["disc"]["TP"] == 1 and m["per_category"]["disc"]["FN"] == 1
    assert m["All"]["PQ"] == pytest.approx(0.8 / 1.5)
    assert m["All"]["SQ"] == pytest.approx(0.8) and m["All"]["RQ"] == pytest.approx(1 / 1.5)
    assert "disc" in format_pq_table(m) and "Things" in format_pq_table(m)


def test_bad_predictions_are_refused_with_the_segment_named():
    gt, gt_segs = [[1, 1]], [{"id": 1, "category_id": 1}]
    with pytest.raises(ValueError, match="segment id 8 is in the map but not in segments_info"):
        match_panoptic_image(np.array(gt), gt_segs, np.array([[8, 8]]), [], CATS)
    with pytest.raises(ValueError, match="unknown category_id 42"):
        match_panoptic_image(np.array(gt), gt_segs, np.array([[8, 8]]), [{"id": 8, "category_id": 42}], CATS)
    with pytest.raises(ValueError, match="differ in size"):
        match_panoptic_image(np.array(gt), gt_segs, np.array([[8]]), [{"id": 8, "category_id": 1}], CATS)
