"""COCO evaluation (bbox and segm) of BlendMask outputs."""
from .coco_eval import (DEFAULT_BACKEND, DEFAULT_MAX_DETS, MAIN_METRICS, RESULTS_FILE, COCOEvaluator, evaluate_model,
                        format_results_table)
from .tiled_eval import evaluate_tiled

__all__ = ["DEFAULT_BACKEND", "DEFAULT_MAX_DETS", "evaluate_tiled", "MAIN_METRICS", "RESULTS_FILE", "COCOEvaluator",
           "evaluate_model", "format_results_table"]
