"""Large images: tiles at native resolution, predicted in batches, merged across the seams."""
from .grid import auto_tile_size, check_tile_options, tile_windows
from .merge import MergedInstance, merge_pieces
from .pieces import Pieces
from .sliced import DEFAULT_MERGE_THRESHOLD, DEFAULT_OVERLAP, resolve_tile, sliced_predict

__all__ = [
    "auto_tile_size",
    "check_tile_options",
    "tile_windows",
    "MergedInstance",
    "merge_pieces",
    "Pieces",
    "DEFAULT_MERGE_THRESHOLD",
    "DEFAULT_OVERLAP",
    "resolve_tile",
    "sliced_predict",
]
