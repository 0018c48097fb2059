"""``blendmask ablate``: the paper's ablation tables (Section 4.2, Tables 1-7) rerun on any data set.

A *grid* is a named list of configurations, one per row of a paper table, each a set of config
overrides on top of the ``lite_mobilenet_v2`` preset and the short-run schedule of
:func:`short_run_overrides`. :func:`run_grid` trains every configuration as ``blendmask train``
does (:func:`blendmask.engine.defaults.train`), evaluates it with COCOeval
(:func:`blendmask.evaluation.evaluate_model`) while timing the blender and the whole forward
pass per image, and writes into the output directory:

- ``<label>/``: the run of one configuration (checkpoints, metrics) and ``<label>/result.json``
  once it is finished: a finished configuration is never retrained (resumable);
- ``table.md`` and ``table.json``: mask AP, AP50, AP75 (in %, as the paper), blender and total
  inference time per image (ms), laid out like the paper's table, the paper's numbers next to ours;
- ``plot.png``: our mask AP and the paper's per configuration.

A custom grid is a JSON file ``{"title": ..., "columns": [...], "rows": [{"label": ...,
"values": [...], "set": {"dotted.config.key": value}}]}`` passed as ``--grid FILE.json``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .output_guard import guard_output_dir, is_bookkeeping

__all__ = [
    "GRIDS", "Grid", "GridRow", "load_grid", "check_grid_keys", "config_keys", "short_run_overrides",
    "default_jobs", "run_grid", "write_table", "write_plot", "MARKER",
]

#: Written into every ablate output directory; another directory is never written into.
MARKER = ".blendmask-ablate"
RESULT_FILE = "result.json"
BASE_CONFIG = "lite_mobilenet_v2"


@dataclass(frozen=True)
class GridRow:
    """One configuration: its ``label`` (also its run directory name), the table cells that
    identify it (``values``, one per grid column), its config overrides, and the paper's
    ``(AP, AP50, AP75)`` for that row where the paper reports them."""

    label: str
    values: Tuple[Any, ...]
    overrides: Mapping[str, Any]
    paper: Optional[Tuple[Optional[float], ...]] = None


@dataclass(frozen=True)
class Grid:
    name: str
    title: str
    columns: Tuple[str, ...]
    rows: Tuple[GridRow, ...]
    base: Mapping[str, Any] = field(default_factory=dict)  # overrides shared by every row


def _rows(*rows: Tuple[str, Tuple[Any, ...], Dict[str, Any], Optional[Tuple[float, ...]]]) -> Tuple[GridRow, ...]:
    return tuple(GridRow(label, values, overrides, paper) for label, values, overrides, paper in rows)


K = "model.basis.num_bases"
M = "model.blender.attn_size"
R = "model.blender.bottom_resolution"
TOP = "model.blender.top_interp"
BOTTOM = "model.blender.bottom_interp"
NORM = "model.blender.normalize"
MERGE = "model.blender.merge"
BASIS_FEATURES = "model.basis.in_features"
BASIS_MODULE = "model.basis.module"
BASIS_WIDTH = "model.basis.convs_dim"
BASIS_LOSS = "model.basis.loss_on"
FPN_P2 = "model.backbone.fpn_with_p2"

#: The paper's tables (numbers: mask AP, AP50, AP75 on COCO val, R-50, 1x; None where not reported).
GRIDS: Dict[str, Grid] = {
    "merge": Grid(
        "merge", "Table 1: merging top and bottom modules (R=28, K=4, M=4; the Assembler has K=16)", ("Merge",),
        _rows(
            ("weighted-sum", ("Weighted-sum (M=1)",), {M: 1}, (29.7, 52.2, 30.1)),
            # FCIS-like: K = M*M = 16 bases, each 7x7 region of the 28x28 crop takes one (no top layer)
            ("assembler", ("Assembler (K=16)",), {MERGE: "assembler", K: 16, M: 4, TOP: "nearest"}, (30.3, 52.5, 31.3)),
            ("blender", ("Blender (M=4)",), {M: 4}, (31.6, 53.4, 33.3)),
        ),
        base={R: 28, K: 4},
    ),
    "resolution": Grid(
        "resolution", "Table 2: top / bottom resolutions (K=4, nearest top interpolation)", ("R", "M"),
        _rows(*[
            (f"R{r}-M{m}", (r, m), {R: r, M: m}, paper)
            for (r, m), paper in {
                (28, 2): (30.6, None, None), (28, 4): (31.6, None, None), (28, 7): (32.0, None, None),
                (28, 14): None,
                (56, 2): None, (56, 4): (32.5, None, None), (56, 7): (33.1, None, None),
                (56, 14): (33.3, None, None),
            }.items()
        ]),
        base={K: 4, TOP: "nearest"},
    ),
    "bases": Grid(
        "bases", "Table 3: number of bases (R=56, M=7; K=1 blends with sigmoids)", ("K",),
        _rows(
            ("K1", (1,), {K: 1, NORM: "sigmoid"}, (30.6, 52.9, 31.6)),
            ("K2", (2,), {K: 2}, (31.2, 53.4, 32.3)),
            ("K4", (4,), {K: 4}, (33.1, 54.1, 34.9)),
            ("K8", (8,), {K: 8}, (33.0, 53.9, 34.9)),
        ),
        base={R: 56, M: 7},
    ),
    "bottom-features": Grid(
        "bottom-features", "Table 4: bottom feature locations (R=56, K=4, bilinear bottom)", ("Features", "M"),
        _rows(
            ("C3C5-M7", ("C3, C5", 7), {BASIS_FEATURES: ("c3", "c5"), M: 7}, (33.1, 54.1, 34.9)),
            ("C3C5-M14", ("C3, C5", 14), {BASIS_FEATURES: ("c3", "c5"), M: 14}, (33.3, 54.1, 35.3)),
            ("P3P5-M7", ("P3, P5", 7), {BASIS_FEATURES: ("p3", "p5"), M: 7}, (33.3, 54.2, 35.3)),
            ("P3P5-M14", ("P3, P5", 14), {BASIS_FEATURES: ("p3", "p5"), M: 14}, (33.4, 54.3, 35.5)),
        ),
        base={R: 56, K: 4, BOTTOM: "bilinear"},
    ),
    "top-interp": Grid(
        "top-interp", "Table 5: top interpolation (R=56, K=4, bilinear bottom)", ("Interpolation", "M"),
        _rows(
            ("nearest-M7", ("Nearest", 7), {TOP: "nearest", M: 7}, (33.3, 54.2, 35.3)),
            ("nearest-M14", ("Nearest", 14), {TOP: "nearest", M: 14}, (33.4, 54.3, 35.5)),
            ("bilinear-M7", ("Bilinear", 7), {TOP: "bilinear", M: 7}, (33.5, 54.3, 35.7)),
            ("bilinear-M14", ("Bilinear", 14), {TOP: "bilinear", M: 14}, (33.6, 54.6, 35.6)),
        ),
        base={R: 56, K: 4, BOTTOM: "bilinear"},
    ),
    "bottom-interp": Grid(
        "bottom-interp", "Table 6: bottom alignment (K=4, bilinear top)", ("Alignment", "R", "M"),
        _rows(
            ("nearest-R28-M7", ("Nearest", 28, 7), {BOTTOM: "nearest", R: 28, M: 7}, (30.5, 53.0, 31.6)),
            ("nearest-R56-M14", ("Nearest", 56, 14), {BOTTOM: "nearest", R: 56, M: 14}, (31.9, 53.6, 33.4)),
            ("bilinear-R28-M7", ("Bilinear", 28, 7), {BOTTOM: "bilinear", R: 28, M: 7}, (32.4, 54.4, 34.5)),
            ("bilinear-R56-M14", ("Bilinear", 56, 14), {BOTTOM: "bilinear", R: 56, M: 14}, (33.6, 54.6, 35.6)),
        ),
        base={K: 4, TOP: "bilinear"},
    ),
    "bottom-module": Grid(
        "bottom-module", "Table 7: bottom module (R=56, K=4, M=14, bilinear)", ("Bottom",),
        _rows(
            ("deeplab", ("DeepLabV3+",),
             {BASIS_MODULE: "deeplabv3plus", BASIS_FEATURES: ("p3", "p5"), BASIS_WIDTH: 128, BASIS_LOSS: False},
             (33.6, 54.6, 35.6)),
            ("deeplab-semantic", ("+semantic",),
             {BASIS_MODULE: "deeplabv3plus", BASIS_FEATURES: ("p3", "p5"), BASIS_WIDTH: 128, BASIS_LOSS: True},
             (34.2, 54.9, 36.4)),
            ("deeplab-256", ("+128",),
             {BASIS_MODULE: "deeplabv3plus", BASIS_FEATURES: ("p3", "p5"), BASIS_WIDTH: 256, BASIS_LOSS: True},
             (34.3, 54.9, 36.6)),
            ("deeplab-s4", ("+s/4",),
             {BASIS_MODULE: "deeplabv3plus", BASIS_FEATURES: ("p2", "p5"), FPN_P2: True, BASIS_WIDTH: 256,
              BASIS_LOSS: True},
             (34.4, 55.0, 36.8)),
            ("proto-p3", ("Proto-P3",),
             {BASIS_MODULE: "protonet", BASIS_FEATURES: ("p3",), BASIS_WIDTH: 256, BASIS_LOSS: True},
             (34.4, 54.9, 36.8)),
            ("proto-fpn", ("Proto-FPN",),
             {BASIS_MODULE: "protonet", BASIS_FEATURES: ("p3", "p4", "p5"), BASIS_WIDTH: 128, BASIS_LOSS: True},
             (34.4, 54.9, 36.8)),
        ),
        base={R: 56, K: 4, M: 14, TOP: "bilinear", BOTTOM: "bilinear"},
    ),
}


def config_keys() -> List[str]:
    """Every dotted config key (``model.blender.attn_size``...), sorted."""
    from blendmask.config import BlendMaskConfig

    keys: List[str] = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")

    walk(BlendMaskConfig().to_dict(), "")
    return sorted(keys)


def check_grid_keys(grid: Grid, where: str) -> None:
    """Raise ``ValueError`` (one line, listing the valid keys) for an override key that is not a config field."""
    valid = set(config_keys())
    for row in grid.rows:
        for key in [*grid.base, *row.overrides]:
            if key not in valid:
                raise ValueError(f"{where}: row {row.label!r}: {key!r} is not a config field; valid keys: "
                                 f"{', '.join(sorted(valid))}")


def load_grid(name_or_file: str) -> Grid:
    """A built-in grid by name, or a custom grid from a JSON file (see the module docstring)."""
    if name_or_file in GRIDS:
        grid = GRIDS[name_or_file]
        check_grid_keys(grid, f"grid {name_or_file!r}")
        return grid
    path = Path(name_or_file)
    if not (name_or_file.endswith(".json") and path.is_file()):
        raise ValueError(f"unknown grid {name_or_file!r}; valid grids: {', '.join(GRIDS)} (or a grid JSON file)")
    try:
        data = json.loads(path.read_text())
        columns = tuple(str(c) for c in data["columns"])
        rows = tuple(
            GridRow(str(r["label"]), tuple(r.get("values", (r["label"],))), dict(r["set"]),
                    tuple(r["paper"]) if r.get("paper") else None)
            for r in data["rows"]
        )
        grid = Grid(str(data.get("name", path.stem)), str(data.get("title", path.stem)), columns, rows,
                    dict(data.get("base", {})))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"grid file {path}: expected {{'columns': [...], 'rows': [{{'label', 'values', 'set'}}]}}: "
                         f"{type(exc).__name__}: {exc}") from None
    if not rows:
        raise ValueError(f"grid file {path}: 'rows' is empty")
    labels = [r.label for r in rows]
    for i, row in enumerate(rows):
        if not row.label or "/" in row.label or row.label.startswith("."):
            raise ValueError(f"grid file {path}: rows[{i}] label {row.label!r} is not a plain directory name")
        if len(row.values) != len(columns):
            raise ValueError(f"grid file {path}: rows[{i}] ({row.label!r}) has {len(row.values)} values for "
                             f"{len(columns)} columns")
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid file {path}: labels must be distinct, got {labels}")
    check_grid_keys(grid, f"grid file {path}")
    return grid


def short_run_overrides(iters: int, size: int) -> Dict[str, Any]:
    """The schedule of one short ablation run: ``iters`` iterations at batch 4, warm-up over
    the first fifth, the lr divided by 10 at 75% and 92%, ``size``-pixel inputs, no
    intermediate checkpoint or evaluation (``blendmask demo``'s recipe, shortened)."""
    if iters < 1:
        raise ValueError(f"--iters must be >= 1, got {iters}")
    steps = tuple(sorted({s for s in (int(iters * 0.75), int(iters * 0.92)) if 0 < s < iters}))
    return {
        "solver.max_iter": iters, "solver.ims_per_batch": 4, "solver.base_lr": 0.01,
        "solver.warmup_iters": max(1, min(100, iters // 5)), "solver.steps": steps,
        "solver.checkpoint_period": 0, "solver.eval_period": 0,
        "input.min_size_train": (size,), "input.max_size_train": size,
        "input.min_size_test": size, "input.max_size_test": size,
    }


def default_jobs(cpu_count: Optional[int] = None) -> int:
    """Parallel runs the machine allows: one per 4 cores (each run gets >= 2 threads), so 1 on 2 cores."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cpus // 4)


def max_jobs(cpu_count: Optional[int] = None) -> int:
    """The most parallel runs allowed: one per 2 cores."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cpus // 2)


# --------------------------------------------------------------------------- one configuration

def _timed_evaluation(weights: Path, dataset, output_dir: Path) -> Dict[str, Any]:
    """COCO metrics of ``weights`` on ``dataset`` plus the mean blender and forward time per image (ms)."""
    import torch

    from blendmask.models import load_model_from_weights
    from blendmask.evaluation import evaluate_model

    model, _ = load_model_from_weights(weights)
    timings = {"blender": 0.0, "total": 0.0, "images": 0}
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def timed(fn: Callable, key: str, count_images: bool) -> Callable:
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            timings[key] += time.perf_counter() - start
            if count_images:
                timings["images"] += len(args[0])
            return out
        return wrapper

    model.blend_masks = timed(model.blend_masks, "blender", False)  # instance attributes shadow the methods
    model.forward = timed(model.forward, "total", True)
    metrics = evaluate_model(model, dataset, output_dir=output_dir, progress=False)
    images = max(timings["images"], 1)
    return {"metrics": metrics, "blender_ms": 1000 * timings["blender"] / images,
            "total_ms": 1000 * timings["total"] / images, "images": timings["images"]}


def run_configuration(run: Dict[str, Any]) -> Dict[str, Any]:
    """Train and evaluate one configuration (``run``: its data, eval source, run dir, overrides,
    seed, threads and ``announce`` callback); writes and returns ``result.json``. Runs in a worker
    process with ``--jobs > 1``."""
    import torch

    from blendmask.engine import defaults
    from blendmask.engine.tasks import INSTANCE

    if run.get("threads"):
        torch.set_num_threads(run["threads"])
    run_dir = Path(run["run_dir"])
    start = time.perf_counter()
    trained = defaults.train(config=BASE_CONFIG, data=run["data"], output=str(run_dir), overrides=run["overrides"],
                             resume=(run_dir / "last_checkpoint").exists(), seed=run["seed"], evaluate_on_val=False,
                             announce=run["announce"])
    result = trained.result
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    dataset = defaults.load_dataset(run["eval_data"], run["eval_split"], task=INSTANCE, input_cfg=trained.cfg.input)
    evaluation = _timed_evaluation(Path(result.final_checkpoint), dataset, run_dir / "eval")
    record = {"label": run["label"], "overrides": _jsonable(run["overrides"]), "train_s": train_s,
              "eval_s": time.perf_counter() - start, "eval_split": run["eval_split"], **evaluation}
    text = json.dumps(record, indent=1)
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(run_dir / RESULT_FILE)  # atomic: a result file is always complete
    return json.loads(text)  # what a resumed run reads back


def _jsonable(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(dict(overrides)))


# --------------------------------------------------------------------------- the grid

def _prepare_output(output: Path, grid: Grid) -> None:
    """Create ``output`` or reuse one made by ablate for the same grid; refuse anything else."""
    marker = output / MARKER
    if output.exists():
        if not output.is_dir():
            raise NotADirectoryError(f"--output {output} exists and is not a directory")
        if marker.is_file():
            made_for = json.loads(marker.read_text()).get("grid")
            if made_for != grid.name:
                raise FileExistsError(f"--output {output} holds the ablation of grid {made_for!r}, not {grid.name!r}: "
                                      "choose another --output")
            return
        if any(not is_bookkeeping(entry.name) for entry in output.iterdir()):
            raise FileExistsError(f"--output {output} exists and was not made by 'blendmask ablate': "
                                  "choose a new or empty directory")
    output.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"grid": grid.name}) + "\n")


def _eval_source(data: str) -> Tuple[str, str]:
    """The val split of a data directory; a data set without one (a single COCO JSON) is
    evaluated on its training images (stated in the table)."""
    from blendmask.engine.defaults import val_source

    val = val_source(data, None)
    return (val, "val") if val else (data, "train")


def configuration_overrides(grid: Grid, row: GridRow, iters: int, size: int,
                            extra_overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The config overrides of one configuration (on :data:`BASE_CONFIG`): the short-run schedule,
    the grid's shared overrides, the row's, then ``extra_overrides`` (``--set``)."""
    return {**short_run_overrides(iters, size), **grid.base, **row.overrides, **(extra_overrides or {})}


def run_grid(
    grid: Grid,
    data: str,
    output: Path,
    *,
    iters: int,
    size: int = 256,
    jobs: int = 1,
    seed: int = 0,
    extra_overrides: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    announce: Optional[Callable[[str], None]] = None,
) -> List[Dict[str, Any]]:
    """Run every configuration of ``grid`` not finished yet, then write the table and the plot.

    Returns the result records in grid order. A configuration whose ``result.json`` exists with
    the same overrides is reused; one with different overrides is an error (another
    ``--iters`` or ``--set`` needs another ``--output``). ``announce`` receives each training
    run's description (a module-level function, so that it pickles into worker processes).
    The run holds the output guard of ``output`` (:mod:`blendmask.output_guard`).
    """
    from blendmask.config import get_config
    from blendmask.models import build_model

    if jobs < 1 or jobs > max_jobs():
        raise ValueError(f"--jobs must be in [1, {max_jobs()}] on this machine ({os.cpu_count()} cores: one run "
                         f"per 2 cores), got {jobs}")
    if not Path(data).exists():
        raise FileNotFoundError(f"--data {data!r} does not exist (give a data directory or a COCO JSON file)")
    eval_data, eval_split = _eval_source(data)
    runs = []
    for row in grid.rows:
        overrides = configuration_overrides(grid, row, iters, size, extra_overrides)
        build_model(get_config(BASE_CONFIG, overrides))  # a bad value or an unbuildable model fails before any training
        runs.append({"label": row.label, "data": data, "eval_data": eval_data, "eval_split": eval_split,
                     "run_dir": str(output / row.label), "overrides": overrides, "seed": seed, "announce": announce,
                     "threads": max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None})
    with guard_output_dir(output, option="--output", command="blendmask ablate", owned_marker=MARKER):
        _prepare_output(output, grid)
        return _run_configurations(grid, runs, data, output, iters=iters, size=size, jobs=jobs,
                                   eval_split=eval_split, progress=progress)


def _run_configurations(grid: Grid, runs: List[Dict[str, Any]], data: str, output: Path, *, iters: int, size: int,
                        jobs: int, eval_split: str, progress: bool) -> List[Dict[str, Any]]:
    """:func:`run_grid`'s work in its guarded ``output``: the runs not done yet, the table, the plot."""
    from tqdm import tqdm

    records: Dict[str, Dict[str, Any]] = {}
    todo = []
    for run in runs:
        done = Path(run["run_dir"]) / RESULT_FILE
        if done.is_file():
            record = json.loads(done.read_text())
            if record.get("overrides") != _jsonable(run["overrides"]):
                raise FileExistsError(f"{done} was run with other settings ({record.get('overrides')}); "
                                      "use another --output for other --iters/--size/--set")
            records[run["label"]] = record
        else:
            todo.append(run)
    bar = tqdm(total=len(runs), initial=len(records), desc=f"ablate {grid.name}", unit="config", disable=not progress)
    try:
        if jobs == 1:
            for run in todo:
                bar.set_postfix_str(run["label"])
                records[run["label"]] = run_configuration(run)
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_configuration, run): run["label"] for run in todo}
                for future in as_completed(futures):
                    records[futures[future]] = future.result()
                    bar.update(1)
    finally:
        bar.close()
    ordered = [records[row.label] for row in grid.rows]
    write_table(grid, ordered, output, iters=iters, size=size, data=data, eval_split=eval_split)
    write_plot(grid, ordered, output / "plot.png")
    return ordered


# --------------------------------------------------------------------------- table and plot

def _pct(value: Optional[float]) -> Optional[float]:
    return None if value is None or value < 0 else round(100.0 * value, 1)


def table_rows(grid: Grid, records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One dict per configuration: the grid columns, our AP / AP50 / AP75 (%), times (ms), the paper's."""
    out = []
    for row, record in zip(grid.rows, records):
        segm = record["metrics"]["segm"]
        paper = tuple(row.paper or ()) + (None,) * 3
        out.append({
            **dict(zip(grid.columns, row.values)),
            "AP": _pct(segm["AP"]), "AP50": _pct(segm["AP50"]), "AP75": _pct(segm["AP75"]),
            "blender_ms": round(record["blender_ms"], 2), "total_ms": round(record["total_ms"], 1),
            "paper_AP": paper[0], "paper_AP50": paper[1], "paper_AP75": paper[2],
            "label": row.label,
        })
    return out


def write_table(grid: Grid, records: Sequence[Mapping[str, Any]], output: Path, *, iters: int, size: int,
                data: str, eval_split: str) -> Tuple[Path, Path]:
    """``table.md`` and ``table.json`` in ``output``; returns their paths."""
    rows = table_rows(grid, records)
    headers = [*grid.columns, "AP", "AP50", "AP75", "blender (ms/img)", "total (ms/img)",
               "paper AP", "paper AP50", "paper AP75"]
    keys = [*grid.columns, "AP", "AP50", "AP75", "blender_ms", "total_ms", "paper_AP", "paper_AP50", "paper_AP75"]

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [f"### {grid.title}", "",
             f"Ours: mask AP (%) on the {eval_split} split of `{data}`, {iters} iterations at {size} px from "
             f"`{BASE_CONFIG}`; paper: COCO val, R-50. Times are CPU milliseconds per image (blender op / whole forward).",
             "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    if all("train_s" in r and "eval_s" in r for r in records):
        train_s, eval_s = sum(r["train_s"] for r in records), sum(r["eval_s"] for r in records)
        lines += ["", f"Wall time: {(train_s + eval_s) / 60:.1f} min for {len(records)} configurations "
                      f"(training {train_s / 60:.1f} min including model builds, evaluation {eval_s / 60:.1f} min)."]
    md = output / "table.md"
    md.write_text("\n".join(lines) + "\n")
    js = output / "table.json"
    js.write_text(json.dumps({"grid": grid.name, "title": grid.title, "columns": list(grid.columns), "iters": iters,
                              "size": size, "data": str(data), "eval_split": eval_split, "rows": rows}, indent=1))
    return md, js


def write_plot(grid: Grid, records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bars of our mask AP and the paper's, one group per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(grid, records)
    labels = [", ".join(str(r[c]) for c in grid.columns) for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 3.6))
    width = 0.38
    ours = [r["AP"] if r["AP"] is not None else 0.0 for r in rows]
    paper = [r["paper_AP"] if r["paper_AP"] is not None else 0.0 for r in rows]
    ax.bar([x - width / 2 for x in xs], ours, width, label="ours (short CPU run)")
    ax.bar([x + width / 2 for x in xs], paper, width, label="paper (COCO)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mask AP (%)")
    ax.set_title(grid.title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
