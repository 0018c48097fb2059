"""``blendmask ablate``: grid parsing, bad names and keys, a tiny resumable run, the table and plot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from blendmask import ablate
from blendmask.ablate import GRIDS, Grid, GridRow, load_grid, run_grid, write_plot, write_table
from blendmask.cli import main
from tests.helpers.cli import IMAGE_SIDE



@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from blendmask.data import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), train=4, val=2, size=IMAGE_SIDE, seed=3)


def _grid_file(tmp_path: Path, rows) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"title": "tiny", "columns": ["M"], "rows": rows}))
    return path


TINY_ROWS = [
    {"label": "M1", "values": [1], "set": {"model.blender.attn_size": 1}, "paper": [29.7, 52.2, 30.1]},
    {"label": "K1-sigmoid", "values": [2], "set": {"model.basis.num_bases": 1, "model.blender.normalize": "sigmoid",
                                                     "model.blender.attn_size": 2}},
]
# a threshold of 0 keeps detections after 1-2 iterations, so the blender runs (and is timed)
TINY_RUN_OVERRIDES = {"model.blender.bottom_resolution": 14, "solver.ims_per_batch": 2, "model.fcos.inference_th": 0.0,
            "model.fcos.post_nms_topk": 5}


def test_every_paper_table_is_a_grid_of_config_fields():
    assert list(GRIDS) == ["merge", "resolution", "bases", "bottom-features", "top-interp", "bottom-interp",
                           "bottom-module"]
    keys = set(ablate.config_keys())
    for name, grid in GRIDS.items():
        assert load_grid(name) is grid
        assert len({row.label for row in grid.rows}) == len(grid.rows)
        for row in grid.rows:
            assert len(row.values) == len(grid.columns)
            assert set(row.overrides) | set(grid.base) <= keys
    assert [r.overrides["model.basis.num_bases"] for r in GRIDS["bases"].rows] == [1, 2, 4, 8]
    assert GRIDS["bases"].rows[0].overrides["model.blender.normalize"] == "sigmoid"
    assert len(GRIDS["resolution"].rows) == 8


def test_every_built_in_configuration_builds():
    """Each row of every built-in grid is a model the builder accepts (the bottom-module grid's
    "+s/4" row once asked for P2 without the FPN level that provides it, and failed at its start)."""
    from blendmask.config import get_config
    from blendmask.models import build_model

    for name, grid in GRIDS.items():
        for row in grid.rows:
            overrides = ablate.configuration_overrides(grid, row, iters=1, size=64)
            try:
                build_model(get_config(ablate.BASE_CONFIG, overrides))
            except ValueError as error:
                raise AssertionError(f"grid {name!r}, row {row.label!r}: {error}") from error


def test_unknown_grid_name_lists_the_grids():
    with pytest.raises(ValueError, match="unknown grid 'tabel-3'; valid grids: merge, resolution, bases, "
                                         "bottom-features, top-interp, bottom-interp, bottom-module"):
        load_grid("tabel-3")


def test_grid_key_that_is_not_a_config_field_lists_the_fields(tmp_path):
    path = _grid_file(tmp_path, [{"label": "a", "values": [1], "set": {"model.blender.atn_size": 1}}])
    with pytest.raises(ValueError) as exc:
        load_grid(str(path))
    message = str(exc.value)
    assert "\n" not in message
    assert "'model.blender.atn_size' is not a config field" in message and "model.blender.attn_size" in message


@pytest.mark.parametrize("rows, needle", [
    ([{"label": "a", "values": [1, 2], "set": {}}], "has 2 values for 1 columns"),
    ([{"label": "a", "values": [1], "set": {}}, {"label": "a", "values": [2], "set": {}}], "distinct"),
    ([{"label": "../x", "values": [1], "set": {}}], "plain directory name"),
    ([{"values": [1], "set": {}}], "expected"),
    ([], "'rows' is empty"),
])
def test_bad_grid_files(tmp_path, rows, needle):
    with pytest.raises(ValueError, match=needle):
        load_grid(str(_grid_file(tmp_path, rows)))


def test_jobs_default_to_one_on_two_cores():
    assert ablate.default_jobs(2) == 1 and ablate.default_jobs(16) == 4
    assert ablate.max_jobs(2) == 1


def test_short_run_schedule():
    o = ablate.short_run_overrides(40, 128)
    assert o["solver.max_iter"] == 40 and o["solver.steps"] == (30, 36) and o["solver.warmup_iters"] == 8
    assert o["input.min_size_train"] == (128,) and o["input.max_size_test"] == 128
    assert ablate.short_run_overrides(1, 64)["solver.steps"] == ()
    with pytest.raises(ValueError, match="--iters"):
        ablate.short_run_overrides(0, 64)


def _fake_record(ap):
    return {"metrics": {"segm": {"AP": ap, "AP50": ap + 0.1, "AP75": ap / 2}}, "blender_ms": 1.234, "total_ms": 56.78}


def test_table_is_laid_out_like_the_paper(tmp_path):
    grid = Grid("t", "Table 6-like", ("Alignment", "R"),
                (GridRow("n", ("Nearest", 28), {}, (30.5, 53.0, 31.6)), GridRow("b", ("Bilinear", 28), {}, None)))
    md, js = write_table(grid, [_fake_record(0.25), _fake_record(0.3)], tmp_path, iters=5, size=64, data="d",
                         eval_split="val")
    lines = md.read_text().splitlines()
    assert lines[0] == "### Table 6-like"
    assert lines[4].startswith("| Alignment | R | AP | AP50 | AP75 | blender (ms/img) | total (ms/img) | paper AP")
    assert lines[6] == "| Nearest | 28 | 25.0 | 35.0 | 12.5 | 1.23 | 56.8 | 30.5 | 53.0 | 31.6 |"
    assert lines[7] == "| Bilinear | 28 | 30.0 | 40.0 | 15.0 | 1.23 | 56.8 | - | - | - |"
    assert len(lines) == 8  # records without timings (e.g. resumed from an older run): no wall-time line
    timed = [{**_fake_record(0.25), "train_s": 60.0, "eval_s": 30.0}, {**_fake_record(0.3), "train_s": 60.0, "eval_s": 30.0}]
    md, _ = write_table(grid, timed, tmp_path, iters=5, size=64, data="d", eval_split="val")
    assert md.read_text().splitlines()[-1] == ("Wall time: 3.0 min for 2 configurations (training 2.0 min including "
                                               "model builds, evaluation 1.0 min).")
    md, js = write_table(grid, [_fake_record(0.25), _fake_record(0.3)], tmp_path, iters=5, size=64, data="d",
                         eval_split="val")
    table = json.loads(js.read_text())
    assert table["rows"][0]["AP"] == 25.0 and table["rows"][1]["paper_AP"] is None
    png = write_plot(grid, [_fake_record(0.25), _fake_record(0.3)], tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_grid_runs_resumes_and_refuses_other_settings(tiny_set, tmp_path, monkeypatch):
    grid = load_grid(str(_grid_file(tmp_path, TINY_ROWS)))
    out = tmp_path / "out"
    records = run_grid(grid, str(tiny_set), out, iters=2, size=IMAGE_SIDE, extra_overrides=TINY_RUN_OVERRIDES, progress=False)
    assert [r["label"] for r in records] == ["M1", "K1-sigmoid"]
    for row, record in zip(grid.rows, records):
        assert (out / row.label / "result.json").is_file()
        assert record["images"] == 2 and record["eval_split"] == "val"
        assert record["total_ms"] >= record["blender_ms"] > 0
        assert record["train_s"] > 0 and record["eval_s"] > 0
        assert 0.0 <= record["metrics"]["segm"]["AP"] <= 1.0
    table = json.loads((out / "table.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["M1", "K1-sigmoid"] and table["rows"][0]["paper_AP"] == 29.7
    assert (out / "table.md").is_file() and (out / "plot.png").is_file()
    assert (out / "table.md").read_text().splitlines()[-1].startswith("Wall time: ")

    # resumable: a finished configuration is not retrained
    def no_training(task):
        raise AssertionError(f"{task['label']} was retrained")

    monkeypatch.setattr(ablate, "run_configuration", no_training)
    again = run_grid(grid, str(tiny_set), out, iters=2, size=IMAGE_SIDE, extra_overrides=TINY_RUN_OVERRIDES, progress=False)
    assert json.dumps(again) == json.dumps(records)  # (NaN metrics: compare the JSON text)
    with pytest.raises(FileExistsError, match="other settings"):
        run_grid(grid, str(tiny_set), out, iters=3, size=IMAGE_SIDE, extra_overrides=TINY_RUN_OVERRIDES, progress=False)


def test_interrupted_grid_trains_only_the_missing_configuration(tiny_set, tmp_path, monkeypatch):
    grid = load_grid(str(_grid_file(tmp_path, TINY_ROWS)))
    out = tmp_path / "out"
    trained = []
    real = ablate.run_configuration

    def first_only(task):
        if trained:
            raise KeyboardInterrupt  # the run stops during the second configuration
        trained.append(task["label"])
        return real(task)

    monkeypatch.setattr(ablate, "run_configuration", first_only)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, str(tiny_set), out, iters=1, size=IMAGE_SIDE, extra_overrides=TINY_RUN_OVERRIDES, progress=False)
    assert trained == ["M1"] and not (out / "table.md").exists()

    def second_only(task):
        assert task["label"] == "K1-sigmoid", "M1 is finished and must not be retrained"
        trained.append(task["label"])
        return real(task)

    monkeypatch.setattr(ablate, "run_configuration", second_only)
    run_grid(grid, str(tiny_set), out, iters=1, size=IMAGE_SIDE, extra_overrides=TINY_RUN_OVERRIDES, progress=False)
    assert trained == ["M1", "K1-sigmoid"] and (out / "table.md").is_file()


def test_one_image_data_set_runs_through_the_cli(tmp_path, capsys):
    from blendmask.data import make_shapes

    data = make_shapes(tmp_path / "one", train=1, val=0, size=IMAGE_SIDE, seed=5)
    grid = _grid_file(tmp_path, TINY_ROWS[:1])
    out = tmp_path / "ablate"
    code = main(["ablate", "--data", str(data / "annotations" / "instances_train.json"), "--grid", str(grid),
                 "--iters", "1", "--size", str(IMAGE_SIDE), "--output", str(out), "--set",
                 "model.blender.bottom_resolution=14", "solver.ims_per_batch=1", "model.fcos.inference_th=0.0",
                 "model.fcos.post_nms_topk=5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| M | AP | AP50 |" in printed and "train split" in printed
    assert json.loads((out / "table.json").read_text())["eval_split"] == "train"


def test_output_not_made_by_ablate_is_refused(tiny_set, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["ablate", "--data", str(tiny_set), "--grid", "bases", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not made by 'blendmask ablate'" in err[0]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_configuration_the_model_cannot_build_fails_before_any_training(tiny_set, tmp_path, monkeypatch):
    rows = TINY_ROWS[:1] + [{"label": "p2", "values": [3], "set": {"model.basis.in_features": ["p2", "p5"]}}]
    grid = load_grid(str(_grid_file(tmp_path, rows)))

    def no_training(task):
        raise AssertionError("training started")

    monkeypatch.setattr(ablate, "run_configuration", no_training)
    with pytest.raises(ValueError, match="no level 'p2'"):
        run_grid(grid, str(tiny_set), tmp_path / "out", iters=1, size=IMAGE_SIDE, progress=False)
