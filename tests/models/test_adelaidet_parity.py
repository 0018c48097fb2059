"""Parity with numbers recorded from AdelaiDet's own code (``tests/fixtures/adelaidet``).

Per recorded config: the deterministic weights of ``fixtures/adelaidet/synthetic.py`` are
regenerated under AdelaiDet's key names, converted as ``blendmask convert`` does
(:func:`blendmask.convert.convert_state_dict`, then ``match_state_dict`` and a strict load), and loaded into our preset of the same name; our model then
runs on the same images and targets and is compared with AdelaiDet's recorded outputs:

- detections identical in order (classes; scores within 1e-4), boxes within 1e-3 px, against AdelaiDet's
  ``detector_postprocess`` output; AdelaiDet's own rule is checked on the fixture (its final
  detections are its blender's detections with boxes clipped and the empty ones dropped);
- the bottom-up and FPN outputs (their first channels), to 5e-4 of their largest value;
- the R x R mask logits of the blender, with AdelaiDet's (unclipped) boxes as rois, to 1e-4
  relative; our eval masks equal AdelaiDet's wherever we blend with AdelaiDet's box: inside the
  image always; at the border only if we blend with the unclipped box (``detect`` returns the boxes
  it blended with; clipped, they must be AdelaiDet's final boxes);
- the five train-mode losses on fixed targets to 1e-5 relative.

Tolerances: float32 against float32, scaled with each config's measured rounding spread. In float64 our
stages agree with AdelaiDet's to 1e-13 (``fixtures/adelaidet/compare_float64.py``), so every difference
from a float32 fixture is rounding: the recording's and ours, each set by the kernels a CPU picks (ATen's
vector width, oneDNN's ISA and blocking, AMX or not) and the thread count, and growing with depth (101
layers, deformable convolutions sampling bilinearly at computed offsets). ``fixtures/adelaidet/
measure_float32_spread.py`` measured the largest difference of each quantity per config under three
kernel choices (this CPU's own, ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41``), eval and
inference path, into ``float32_spread.json``. Each tolerance is the documented one above or
``SAFETY`` times that spread, whichever is larger: a factor 2 because the two rounding errors (the
recording's, ours) may peak together on a machine where neither was measured at its peak, and a factor 2
for kernel choices not measured here (AVX-512, AMX, other blockings). The shallow configs keep the
documented tolerances; the deep ones (R-101 with deformable convolutions) get the derived ones. The
tie window of the order check scales with the score spread the same way. The suite also runs this
module under ``ATEN_CPU_CAPABILITY=default`` and ``avx2`` (``test_parity_under_cpu_capability``).

Deliberate difference in the detections: we drop detections whose clipped box is empty before
the final top-k, AdelaiDet after it; so our list is AdelaiDet's final list, possibly followed by
detections AdelaiDet cut at its top-k (as many as it dropped as empty, scored no higher).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from blendmask import _extension
from blendmask.models import optimize_for_inference
from tests.helpers import adelaidet_parity as parity
from tests.helpers.paths import REPO, subprocess_env

#: the documented tolerances (units in tests/helpers/adelaidet_parity.py): what every config must meet
#: where its measured float32 spread is smaller
DOCUMENTED = parity.Tolerances(
    boxes=1e-3,  # pixels
    scores=1e-4,  # scores are probabilities: the tolerance of the mask probabilities
    mask_logits=1e-4,
    mask_probabilities=1e-4,
    stages=5e-4,
    losses=1e-5,
    ties=1e-6,  # AdelaiDet scores this close are ordered by float rounding (see align_near_ties)
)
#: measured float32 spread -> tolerance (see the module docstring)
SAFETY = 4.0


def tolerances(name: str) -> parity.Tolerances:
    """``DOCUMENTED``, or ``SAFETY`` times the measured float32 spread of ``name`` where that is larger."""
    spread = parity.measured_spread()
    assert name in spread, f"{name}: no measured float32 spread; run tests/fixtures/adelaidet/measure_float32_spread.py"
    measured = {q: SAFETY * spread[name][q] for q in parity.QUANTITIES}
    measured["ties"] = measured["scores"]
    return parity.Tolerances(**{q: max(getattr(DOCUMENTED, q), measured[q]) for q in measured})


@pytest.fixture(scope="module", autouse=True)
def recording_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(parity.RECORDING_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=parity.RECORDED)
def parity_case(request, recording_threads):
    """(record, our model in eval mode with the converted weights, input images, tolerances)."""
    return (*parity.load_parity(request.param), tolerances(request.param))


@pytest.fixture(scope="module")
def run_eval(parity_case):
    """(our ``detect`` output, our backbone's stages as recorded: first channels of each output)."""
    record, model, images, _ = parity_case
    return parity.run_eval(record, model, images)


@pytest.fixture(scope="module")
def detections(run_eval):
    return run_eval[0]


def _assert_within(errors: dict[str, float], tol: parity.Tolerances, what: str) -> None:
    for quantity, error in errors.items():
        assert error <= getattr(tol, quantity), f"{what}: {quantity} differ by {error:.3g} > {getattr(tol, quantity):.3g}"


def test_backbone_and_fpn_stages(parity_case, run_eval):
    """Every bottom-up output the FPN takes and every FPN level, relative to its largest value."""
    record, _, _, tol = parity_case
    _assert_within(parity.stage_errors(record, run_eval[1]), tol, "stages")


def test_adelaidet_postprocess_is_clip_then_drop_empty(parity_case):
    """The fixture itself: AdelaiDet's final detections are its blender's, clipped, empties dropped."""
    record = parity_case[0]
    for size, image in zip(record["image_sizes"], record["images"]):
        proposals, final = image["proposals"], image["final"]
        clipped = parity.clip(proposals["boxes"], size)
        keep = parity.nonempty(clipped)
        torch.testing.assert_close(final["boxes"], clipped[keep], rtol=0, atol=1e-4)
        assert torch.equal(final["classes"], proposals["classes"][keep])
        assert torch.equal(final["scores"], proposals["scores"][keep])


def test_detections_match_in_order(parity_case, detections):
    record, model, _, tol = parity_case
    top_k = model.proposal_generator.post_nms_topk
    _assert_within(parity.detection_errors(record, detections, top_k, tol), tol, "detections")


def test_inference_path_detections_match_in_order(parity_case):
    """What ``blendmask eval``/``predict`` run (:func:`~blendmask.models.optimize_for_inference`:
    batch norms folded, channels_last, Winograd 3x3 convolutions) to the same tolerances."""
    record, model, images, tol = parity_case
    fast = optimize_for_inference(model)
    assert sum(hasattr(m, "winograd_weight") for m in fast.modules()) > 0 or not _extension.extension_loaded()
    detections, _ = parity.run_eval(record, fast, images)
    top_k = model.proposal_generator.post_nms_topk
    _assert_within(parity.detection_errors(record, detections, top_k, tol), tol, "inference path detections")


def test_mask_logits_with_adelaidet_rois(parity_case, detections):
    """The blender's R x R logits, our bases and attentions cropped with AdelaiDet's unclipped boxes;
    our eval masks wherever we blend with AdelaiDet's box."""
    record, model, _, tol = parity_case
    _assert_within(parity.mask_errors(record, model, detections, tol), tol, "masks")


def test_train_losses(parity_case):
    record, model, images, tol = parity_case
    _assert_within(parity.loss_errors(record, model, images), tol, "train losses")


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in parity.ADELAIDET.glob("*.pt"))
    assert parity.RECORDED and total < 5 * 2 ** 20, f"{len(parity.RECORDED)} fixtures, {total} bytes"


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_parity_under_cpu_capability(capability):
    """This module in a subprocess with ``ATEN_CPU_CAPABILITY`` set (read once, at torch's import): ATen's
    and our extension's kernels of that vector width, as on a CPU that has no wider ones."""
    current = torch.backends.cpu.get_cpu_capability().lower()
    if current == capability:
        pytest.skip(f"this run is already the {capability} run: the CPU's own capability is {capability}")
    if current == "default":
        pytest.skip(f"this CPU has no {capability}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not test_parity_under_cpu_capability"],
                          cwd=REPO, env=subprocess_env(ATEN_CPU_CAPABILITY=capability),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
