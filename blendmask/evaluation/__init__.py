"""COCO evaluation (bbox and segm) of BlendMask outputs."""
from .coco_eval import MAIN_METRICS, RESULTS_FILE, COCOEvaluator, evaluate_model, format_results_table

__all__ = ["MAIN_METRICS", "RESULTS_FILE", "COCOEvaluator", "evaluate_model", "format_results_table"]
