"""The spondylolisthesis verifier: crops, rescoring, checkpoints, training and cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from synth_data import two_per_patient

from lumbardx.data.errors import InputError
from lumbardx.engine import crossval as cv
from lumbardx.engine.checkpoint import build_detector, load_checkpoint, save_checkpoint
from lumbardx.engine.crossval_verifier import ROW_SUFFIX, crossval_slip_verifier
from lumbardx.engine.slip_verifier import (
    VerifierTraining,
    other_disc_boxes,
    save_with_rescorer,
)
from lumbardx.models.slip_verifier import SlipVerifier, VerifierConfig, crop_boxes, rescore

NAMES = ["normal", "herniation", "spondylolisthesis"]
SLIP = 2


def test_crop_boxes_samples_the_widened_box() -> None:
    h, w = 40, 60
    # pixel i spans [i, i + 1) (continuous 0-based coordinates): at x its value is x - 0.5
    ramp = torch.arange(w, dtype=torch.float32).expand(h, w)[None]
    box = torch.tensor([[20.0, 10.0, 30.0, 20.0]])
    crop = crop_boxes(ramp, box, context=2.0, size=8)
    assert crop.shape == (1, 1, 8, 8)
    # widened to x 15..35 (8 bins of 2.5 px): bin centres at 16.25 ... 33.75
    assert crop.mean().item() == pytest.approx(25.0 - 0.5, abs=1e-4)
    assert crop[0, 0, :, 0].mean().item() == pytest.approx(16.25 - 0.5, abs=1e-4)
    assert crop[0, 0, :, -1].mean().item() == pytest.approx(33.75 - 0.5, abs=1e-4)


def test_rescoring_lowers_only_the_verified_class() -> None:
    torch.manual_seed(0)
    ver = SlipVerifier(VerifierConfig(SLIP, crop_size=16, width=4, members=2)).eval()
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[5.0, 5, 20, 15], [10, 20, 40, 40], [30, 30, 50, 45], [0, 0, 64, 64]])
    det = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
           "labels": torch.tensor([0, SLIP, 1, SLIP]), "extra": torch.ones(4)}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "labels": torch.zeros(0, dtype=torch.int64)}
    with torch.no_grad():
        out = ver(images, [det, empty])
        p = ver.probability(ver.crops(images[0], boxes[[1, 3]]))
    assert torch.equal(out[0]["scores"][[0, 2]], det["scores"][[0, 2]])
    assert torch.allclose(out[0]["scores"][[1, 3]], (det["scores"][[1, 3]] * p).sqrt())
    assert torch.equal(det["scores"], torch.tensor([0.9, 0.8, 0.7, 0.6]))  # input unchanged
    ver.settings = VerifierConfig(SLIP, crop_size=16, width=4, members=2, power=2.0)
    with torch.no_grad():
        squared = ver(images, [det])[0]["scores"]
    assert torch.allclose(squared[[1, 3]], (det["scores"][[1, 3]] * p ** 2) ** (1 / 3))
    ver.settings = VerifierConfig(SLIP, crop_size=16, width=4, members=2, power=0.0)
    with torch.no_grad():
        assert torch.equal(ver(images, [det])[0]["scores"], det["scores"])
    assert out[0]["extra"] is det["extra"] and out[1] is empty
    # mirror-image averaging: a mirrored crop gets the same probability
    crops = ver.crops(images[0], boxes[[1]])
    with torch.no_grad():
        assert ver.probability(crops).item() == pytest.approx(
            ver.probability(crops.flip(-1)).item(), abs=1e-6)


def test_rescore_ranks_as_the_weighted_product() -> None:
    score = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.3, 0.0])
    p = torch.tensor([0.1, 0.5, 0.9, 0.99, 0.0, 0.7])
    for power in (0.0, 1.0, 2.0, 10.0):
        new = rescore(score, p, power)
        assert torch.equal(torch.argsort(new, descending=True, stable=True),
                           torch.argsort(score * p ** power, descending=True, stable=True))
        assert bool(((new >= 0) & (new <= 1)).all())
        assert new[5] == 0 and (power == 0 or new[4] == 0)  # score = 0, or p = 0
    torch.testing.assert_close(rescore(score, p, 0.0)[:5], score[:5])
    torch.testing.assert_close(rescore(torch.tensor([0.04]), torch.tensor([1.0]), 1.0),
                               torch.tensor([0.2]))  # sqrt(0.04 * 1): a sure verifier raises it


def test_config_round_trip_and_refusals() -> None:
    ver = SlipVerifier(VerifierConfig(SLIP, context=1.6, crop_size=32, width=8, members=2))
    assert VerifierConfig.from_dict(ver.config()) == ver.settings
    with pytest.raises(ValueError, match="not a slip verifier"):
        VerifierConfig.from_dict({"class_index": 2})
    with pytest.raises(ValueError, match="unknown slip verifier settings"):
        VerifierConfig.from_dict({**ver.config(), "depth": 3})
    with pytest.raises(ValueError, match="invalid"):
        VerifierConfig(SLIP, context=0.5)
    with pytest.raises(ValueError, match="invalid"):
        VerifierConfig(SLIP, channels=3)
    # checkpoints written before two-channel verifiers existed read as one channel
    legacy = {k: v for k, v in ver.config().items() if k != "channels"}
    assert VerifierConfig.from_dict(legacy).channels == 1


def test_other_disc_boxes_skip_levels_inside_a_slip_box() -> None:
    gt = torch.tensor([[10.0, 10, 30, 20], [10, 40, 30, 50], [0, 35, 40, 60]])
    labels = torch.tensor([0, 1, SLIP])
    neg = other_disc_boxes(gt, labels, SLIP, (20.0, 10.0))
    assert neg.tolist() == [[10.0, 10.0, 30.0, 20.0]]  # the disc inside the slip box is left out


def test_checkpoint_round_trip_keeps_the_verifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_detector("yolov5n", 3, 64).eval()
    model.rescorer = SlipVerifier(VerifierConfig(SLIP, crop_size=16, width=4, members=1)).eval()
    source = {"model_name": "yolov5n", "class_names": NAMES, "image_size": 64,
              "thresholds": {"spondylolisthesis": 0.2}}
    path = save_with_rescorer(source, model, tmp_path / "with.pt", {"seconds": 1.0})
    loaded = cv.load_detector(path)
    assert isinstance(loaded.model.rescorer, SlipVerifier)
    assert load_checkpoint(path)["thresholds"] == {"spondylolisthesis": 0.2}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[0], loaded.model(x)[0]
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["boxes"], b["boxes"])

    bad = load_checkpoint(path)
    bad["rescorer"] = {"kind": "something else"}
    save_checkpoint(bad, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="bad.pt.*unusable second stage"):
        cv.load_detector(tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="no slip verifier"):
        save_with_rescorer(source, build_detector("yolov5n", 3, 64), tmp_path / "none.pt")


@pytest.fixture(scope="module")
def slip_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 128-px images with many slipped levels, two per patient (4 patients)."""
    return two_per_patient(tmp_path_factory.mktemp("slip"), p_listhesis=1.0)


def test_crossval_of_the_verifier_changes_only_its_class(tmp_path: Path, slip_data: Path) -> None:
    base = cv.crossval(slip_data, ["yolov5n"], k=2, out_dir=tmp_path / "cv",
                       recipe_overrides={"image_size": 64, "epochs": 1, "batch_size": 4,
                                         "num_workers": 0}, progress=False)
    assert not base.failures
    messages: list[str] = []
    stale = tmp_path / "cv2" / "yolov5n" / "fold1" / "error.txt"  # an earlier failed attempt
    stale.parent.mkdir(parents=True)
    stale.write_text("Traceback ...")
    res = crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv2",
                                 config=VerifierConfig(0, crop_size=16, width=4, members=1),
                                 train=VerifierTraining(epochs=1, negatives_per_epoch=50),
                                 compare_with=[tmp_path / "cv" / "table1.json"],
                                 log=messages.append)
    assert [r.name for r in res.rows] == ["yolov5n" + ROW_SUFFIX, "yolov5n (cv)"]
    assert not stale.exists()  # the fold finished: no failure is left on record
    assert (tmp_path / "cv2" / "folds.csv").read_bytes() == \
        (tmp_path / "cv" / "folds.csv").read_bytes()
    for k in range(2):
        before = json.loads((tmp_path / "cv" / "yolov5n" / f"fold{k}" / "result.json").read_text())
        after = json.loads((tmp_path / "cv2" / "yolov5n" / f"fold{k}" / "result.json").read_text())
        # the verifier rescores spondylolisthesis boxes only: the other classes score the same
        for name in ("normal", "herniation"):
            assert after["ap50"][name] == pytest.approx(before["ap50"][name])
        assert after["verifier_seconds"] > 0
        assert after["train_seconds"] == pytest.approx(before["train_seconds"]
                                                       + after["verifier_seconds"])
        weights = tmp_path / "cv2" / "yolov5n" / f"fold{k}" / "last.pt"
        assert Path(after["weights"]) == weights
        assert isinstance(cv.load_detector(weights).model.rescorer, SlipVerifier)
        summary = load_checkpoint(weights)["rescorer_training"]
        assert summary["positives"] > 0 and summary["images"] == before["train_images"]
    table = json.loads((tmp_path / "cv2" / "table1.json").read_text())
    assert len(table["models"]) == 2
    assert any("training the verifier" in m for m in messages)
    # a second call reuses the finished folds
    again = crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv2",
                                   config=VerifierConfig(0, crop_size=16, width=4, members=1),
                                   train=VerifierTraining(epochs=1, negatives_per_epoch=50))
    assert again.reused == [("yolov5n", 0), ("yolov5n", 1)] and not again.ran
    # another power on the same trained verifiers: nothing is trained, only slip scores move
    squared = crossval_slip_verifier(
        tmp_path / "cv", tmp_path / "cv2-power2",
        config=VerifierConfig(0, crop_size=16, width=4, members=1, power=2.0),
        verifiers_from=tmp_path / "cv2", log=messages.append)
    assert len(squared.ran) == 2
    assert not any("training" in m for m in messages[-2:])
    for k in range(2):
        one = json.loads((tmp_path / "cv2" / "yolov5n" / f"fold{k}" / "result.json").read_text())
        two = json.loads((tmp_path / "cv2-power2" / "yolov5n" / f"fold{k}" / "result.json")
                         .read_text())
        assert two["ap50"]["herniation"] == pytest.approx(one["ap50"]["herniation"])
        assert two["verifier_seconds"] == pytest.approx(one["verifier_seconds"])
        rebuilt = cv.load_detector(tmp_path / "cv2-power2" / "yolov5n" / f"fold{k}" / "last.pt")
        assert rebuilt.model.rescorer.settings.power == 2.0
    # a verifier of another shape cannot be reused: each fold fails, reported, none stops
    other = crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv2-other",
                                   config=VerifierConfig(0, crop_size=32, width=4, members=1),
                                   verifiers_from=tmp_path / "cv2")
    assert sorted(other.failures) == [("yolov5n", 0), ("yolov5n", 1)] and not other.ran
    assert "more than the power" in other.failures[("yolov5n", 0)]
    assert "more than the power" in (tmp_path / "cv2-other/yolov5n/fold1/error.txt").read_text()
    # a folder of other settings is not resumed into
    with pytest.raises(InputError, match="other settings"):
        crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv2",
                               config=VerifierConfig(0, crop_size=16, width=4, members=1,
                                                     power=5.0))
    with pytest.raises(InputError, match="already holds"):
        crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv2", resume=False,
                               config=VerifierConfig(0, crop_size=16, width=4, members=1),
                               train=VerifierTraining(epochs=1, negatives_per_epoch=50))
    with pytest.raises(InputError, match="unknown class"):
        crossval_slip_verifier(tmp_path / "cv", tmp_path / "cv3", class_name="stenosis")
    with pytest.raises(InputError, match="crossval.json"):
        crossval_slip_verifier(tmp_path / "nothing", tmp_path / "cv4")


def test_verifier_train_command(tmp_path: Path, slip_data: Path) -> None:
    from lumbardx.cli.verifier import app

    torch.manual_seed(0)
    model = build_detector("yolov5n", 3, 64)
    save_checkpoint({"model": model.state_dict(), "model_name": "yolov5n", "class_names": NAMES,
                     "image_size": 64}, tmp_path / "det.pt")
    run = CliRunner().invoke(app, ["train", str(tmp_path / "det.pt"), str(slip_data),
                                   "--out", str(tmp_path / "with.pt"), "--epochs", "1",
                                   "--members", "1"])
    assert run.exit_code == 0, run.output
    assert "written" in run.output
    assert isinstance(cv.load_detector(tmp_path / "with.pt").model.rescorer, SlipVerifier)
    bad = CliRunner().invoke(app, ["train", str(tmp_path / "det.pt"), str(slip_data),
                                   "--out", str(tmp_path / "x.pt"), "--fold", "0"])
    assert bad.exit_code == 2 and "--fold and --folds-csv go together" in bad.output
    bad = CliRunner().invoke(app, ["train", str(tmp_path / "det.pt"), str(slip_data),
                                   "--out", str(tmp_path / "x.pt"), "--class", "stenosis"])
    assert bad.exit_code == 2 and "unknown class" in bad.output


def test_both_backends_run_the_verifier(tmp_path: Path) -> None:
    from checkpoints import CLASSES, tiny_checkpoint

    from lumbardx.models.pretrained import load_detector
    from lumbardx.models.runtime import onnxruntime_available

    plain = tiny_checkpoint(tmp_path / "plain.pt", thresholds={}, tag="t", training_data="x",
                            image_size=128)
    det = cv.load_detector(plain)
    torch.manual_seed(1)
    det.model.rescorer = SlipVerifier(VerifierConfig(CLASSES.index("spondylolisthesis"),
                                                     crop_size=16, width=4, members=2)).eval()
    with_ver = save_with_rescorer(load_checkpoint(plain), det.model, tmp_path / "with.pt")
    x = torch.rand(1, 3, 128, 128)
    alone = load_detector(plain, backend="torch")
    verified = load_detector(with_ver, backend="torch")
    # with a rescorer the detector hands over its candidates down to the lowest score the
    # verifier can lift to a threshold: threshold ** (1 + power) for slip, 0.25 ** 2 here
    floor = verified.model.postprocess.conf_thresh
    assert floor == pytest.approx(min(0.25, verified.thresholds["spondylolisthesis"] ** 2))
    alone.model.postprocess.conf_thresh = floor
    before = alone.backend(x)[0]
    after = verified.backend(x)[0]
    slip = before["labels"] == SLIP
    assert int(slip.sum()) > 0  # the tiny model proposes slip boxes
    assert torch.equal(before["boxes"], after["boxes"])
    assert torch.equal(before["scores"][~slip], after["scores"][~slip])
    ver = det.model.rescorer
    with torch.no_grad():
        p = ver.probability(ver.crops(x[0], before["boxes"][slip]))
    torch.testing.assert_close(after["scores"][slip], rescore(before["scores"][slip], p, 1.0))
    if not onnxruntime_available():
        pytest.skip("onnx / onnxruntime not installed")
    onnx = load_detector(with_ver, backend="onnx")
    assert onnx.info.backend == "onnxruntime"
    assert onnx.backend.rescorer.runtime == "onnxruntime"  # its CNNs in ONNX Runtime too
    got = onnx.backend(x)[0]
    torch.testing.assert_close(got["scores"], after["scores"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got["boxes"], after["boxes"], atol=0.05, rtol=0)


def test_verifier_of_a_pair_detector_reads_t1_and_t2(tmp_path: Path) -> None:
    from pair_factory import pair_dataset

    from lumbardx.cli.verifier import app
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.data.pairs import SequencePairs
    from lumbardx.engine.slip_verifier import train_slip_verifier

    data = pair_dataset(tmp_path / "data", 4, p_listhesis=1.0)
    torch.manual_seed(0)
    model = build_detector("yolov5n", 3, 64)
    recipe = {"name": "t", "image_size": 64, "sequence_pairs": True}
    save_checkpoint({"model": model.state_dict(), "model_name": "yolov5n", "class_names": NAMES,
                     "recipe": recipe}, tmp_path / "det.pt")
    run = CliRunner().invoke(app, ["train", str(tmp_path / "det.pt"), str(data),
                                   "--out", str(tmp_path / "with.pt"), "--epochs", "1",
                                   "--members", "1", "--crop-size", "16"])
    assert run.exit_code == 0, run.output
    loaded = cv.load_detector(tmp_path / "with.pt")
    verifier = loaded.model.rescorer
    assert isinstance(verifier, SlipVerifier) and verifier.settings.channels == 2
    assert loaded.recipe["sequence_pairs"] is True
    # it crops T1 and T2 (channels 0 and 1) of the detector's input
    image = torch.rand(3, 64, 64)
    crops = verifier.crops(image, torch.tensor([[10.0, 10.0, 40.0, 30.0]]))
    assert crops.shape == (1, 2, 16, 16)
    single = verifier.crops(image[:1].expand(3, -1, -1), torch.tensor([[10.0, 10.0, 40, 30]]))
    assert torch.equal(single[:, 0], single[:, 1])
    p = verifier.probability(crops)
    verifier.use_onnxruntime()
    torch.testing.assert_close(verifier.probability(crops), p, atol=1e-5, rtol=1e-4)
    # gray samples cannot train a two-channel verifier, nor pairs a one-channel one
    ds = LumbarDataset(data, classes="study")
    with pytest.raises(ValueError, match="2-channel crops but the samples have \\[1\\]"):
        train_slip_verifier(model, ds, 2, 64, VerifierConfig(2, crop_size=16, members=1,
                                                            channels=2),
                            VerifierTraining(epochs=1, negatives_per_epoch=10))
    with pytest.raises(ValueError, match="1-channel crops but the samples have \\[2\\]"):
        train_slip_verifier(model, SequencePairs(ds), 2, 64,
                            VerifierConfig(2, crop_size=16, members=1),
                            VerifierTraining(epochs=1, negatives_per_epoch=10))


def test_candidate_floor_is_the_least_score_a_threshold_can_be_reached_from(
        tmp_path: Path) -> None:
    from checkpoints import CLASSES, tiny_checkpoint

    from lumbardx.models.pretrained import EVAL_CONF, candidate_floor, load_detector
    from lumbardx.models.runtime import onnxruntime_available

    plain = tiny_checkpoint(tmp_path / "plain.pt", thresholds={}, tag="t", training_data="x",
                            image_size=128)
    det = cv.load_detector(plain)
    thr = {"normal": 0.3, "herniation": 0.27, "spondylolisthesis": 0.19}
    assert candidate_floor(det.model, thr, CLASSES) == pytest.approx(0.19)  # no second stage
    for power, expected in ((1.0, 0.19 ** 2), (3.0, 0.19 ** 4), (10.0, EVAL_CONF)):
        det.model.rescorer = SlipVerifier(VerifierConfig(SLIP, power=power)).eval()
        assert candidate_floor(det.model, thr, CLASSES) == pytest.approx(expected)
        # the bound is tight: a verifier certain of the slip lifts a box scored at it to thr
        p = torch.ones(1)
        lifted = rescore(torch.tensor([0.19 ** (1 + power)]), p, power)
        assert float(lifted) == pytest.approx(0.19, rel=1e-5)
    # the floor follows thresholds set later, in both backends (an exported graph decodes
    # every candidate; its NMS applies the floor)
    x = torch.rand(1, 3, 128, 128)
    high = tiny_checkpoint(tmp_path / "high.pt", thresholds={n: 0.9 for n in CLASSES},
                           tag="t", training_data="x", image_size=128)
    backends = ["torch"] + (["onnx"] if onnxruntime_available() else [])
    counts = []
    for backend in backends:
        m = load_detector(high, backend=backend)
        assert len(m.backend(x)[0]["scores"]) == 0  # nothing reaches 0.9
        m.set_thresholds({n: 0.05 for n in CLASSES})
        got = m.backend(x)[0]["scores"]
        assert len(got) > 0 and float(got.min()) > 0.05
        counts.append(len(got))
    assert len(set(counts)) == 1
