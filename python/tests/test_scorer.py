"""Scorer files are the CLI's: fitted in Python, read by `oodbox score`, and the reverse."""

import json

import numpy as np
import pytest

import oodbox
from conftest import BOXES, run_cli


def cli_scores(scorer, boxes, tmp_path):
    out = tmp_path / "scores.json"
    run_cli("score", "--scorer", scorer, "--boxes", boxes, "--json", out)
    return json.loads(out.read_text())["boxes"]


def assert_same(mine, cli):
    for key in ("score", "p_value", "confidence", "is_ood"):
        np.testing.assert_array_equal(mine[key], [b[key] for b in cli], err_msg=key)


@pytest.mark.parametrize("kind,params", [("mahalanobis", {}), ("knn", {"nearest": 5}), ("vim", {"princ_dims": 12}),
                                         ("safe", {"epochs": 2, "also": ["vos", "noise"]})])
def test_python_fit_equals_cli_fit_both_ways(kind, params, tmp_path):
    train, val, test = (BOXES / f"{n}.safetensors" for n in ("train", "val", "test_mixed"))
    cli_file = tmp_path / "cli.safetensors"
    text = {k: ",".join(v) if isinstance(v, list) else v for k, v in params.items()}
    run_cli("fit", "--scorer", kind, *[f"--param={k}={v}" for k, v in text.items()],
            "--boxes", train, "--calibration-boxes", val, "--out", cli_file, "--quiet")
    fitted = oodbox.Scorer.fit(kind, oodbox.load_boxes(train), params=params,
                               calibration=oodbox.load_boxes(val))
    py_file = tmp_path / "python.safetensors"
    fitted.save(py_file)
    test_boxes = oodbox.load_boxes(test)
    expected = cli_scores(cli_file, test, tmp_path)
    assert_same(fitted.score(test_boxes), expected)                           # fitted here
    assert_same(oodbox.Scorer.load(cli_file).score(test_boxes), expected)    # CLI file read here
    assert cli_scores(py_file, test, tmp_path) == expected                   # our file, read by the CLI
    assert 0 < sum(b["is_ood"] for b in expected) < len(expected)


def test_fit_from_arrays_with_a_holdout_and_box_sets_round_trip(tmp_path):
    train = oodbox.load_boxes(BOXES / "train.safetensors")
    assert train["features"].dtype == np.float32 and train["class_id"].dtype == np.int64
    copy = tmp_path / "copy.safetensors"
    oodbox.save_boxes(train, copy)
    again = oodbox.load_boxes(copy)
    assert again.keys() == train.keys()
    for key, value in train.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    cli_file = tmp_path / "cli.safetensors"
    run_cli("fit", "--scorer", "energy", "--boxes", copy, "--calibration-fraction", "0.25",
            "--seed", "7", "--out", cli_file, "--quiet")
    # float64 features and int32 ids are converted; a hold-out of whole images, seeded as the CLI.
    fitted = oodbox.Scorer.fit("energy", features=train["features"].astype(np.float64),
                               logits=train["logits"], class_id=train["class_id"].astype(np.int32),
                               image_index=train["image_index"], boxes={"label": train["label"],
                               "fingerprint": train["fingerprint"]},
                               calibration_fraction=0.25, seed=7)
    test = BOXES / "test_mixed.safetensors"
    assert_same(fitted.score(oodbox.load_boxes(test)), cli_scores(cli_file, test, tmp_path))
    assert fitted.name == "energy" and fitted.alpha == 0.05


def test_a_tail_fit_extrapolates_beyond_the_calibration_range_only():
    train, val = (oodbox.load_boxes(BOXES / f"{n}.safetensors") for n in ("train", "val"))
    far = oodbox.load_boxes(BOXES / "test_ood_far.safetensors")
    plain = oodbox.Scorer.fit("energy", train, calibration=val).score(far)
    tailed = oodbox.Scorer.fit("energy", train, calibration=val, tail=True).score(far)
    beyond = tailed["p_value_extrapolated"]
    assert beyond.any() and not plain["p_value_extrapolated"].any()
    # Inside the range the p-values are the conformal ones; beyond it, below them.
    np.testing.assert_array_equal(tailed["p_value"][~beyond], plain["p_value"][~beyond])
    assert (tailed["p_value"][beyond] < plain["p_value"][beyond]).all()
    assert tailed["p_value"][beyond].min() < 1 / (len(val["class_id"]) + 1)
    with pytest.raises(ValueError, match="need tail=True"):
        oodbox.Scorer.fit("energy", train, calibration=val, tail_quantile=0.9)
    with pytest.raises(oodbox.OodboxError, match="tail quantile"):
        oodbox.Scorer.fit("energy", train, calibration=val, tail=True, tail_quantile=1.5)


def auroc(id_scores, ood_scores):
    """The share of (ID, OOD) pairs scored the right way round."""
    return (np.asarray(ood_scores)[:, None] > np.asarray(id_scores)[None, :]).mean()


def test_outlier_exposure_trains_safe_against_the_unknown_boxes_given():
    train, val, test_id, far = (oodbox.load_boxes(BOXES / f"{n}.safetensors")
                                for n in ("train", "val", "test_id", "test_ood_far"))
    assert (far["label"] == -1).any()
    quick = {"epochs": 5}
    exposed = oodbox.Scorer.fit("safe", train, calibration=val, outliers=far,
                                params={**quick, "surrogate": "unknown"})
    default = oodbox.Scorer.fit("safe", train, calibration=val, params=quick)
    # Shown the far-OOD boxes it is tested on, it must rank them above the ID boxes clearly
    # better than with its own surrogates (at 5 epochs: 0.94 against 0.88).
    shown, own = (auroc(s.score(test_id)["score"], s.score(far)["score"]) for s in (exposed, default))
    assert shown > own + 0.03, (shown, own)
    with pytest.raises(oodbox.OodboxError, match="outlier boxes are for"):
        oodbox.Scorer.fit("safe", train, calibration=val, outliers=far, params=quick)
    # A combine hands them to its outlier-trained component (energy alone: AUROC 0.93).
    combined = oodbox.Scorer.fit("combine", train, calibration=val, outliers=far,
                                 params={"of": "safe:surrogate=unknown:epochs=5,energy", "method": "cauchy"})
    assert auroc(combined.score(test_id)["score"], combined.score(far)["score"]) > own + 0.03
    with pytest.raises(oodbox.OodboxError, match="no component is trained"):
        oodbox.Scorer.fit("combine", train, calibration=val, outliers=far, params={"of": "knn,energy"})


def test_ocsdf_with_exposure_trains_against_the_unknown_boxes_given():
    train, val, test_id, far = (oodbox.load_boxes(BOXES / f"{n}.safetensors")
                                for n in ("train", "val", "test_id", "test_ood_far"))
    exposed = oodbox.Scorer.fit("ocsdf", train, calibration=val, outliers=far,
                                params={"exposure": True})
    plain = oodbox.Scorer.fit("ocsdf", train, calibration=val)
    # Shown the far-OOD boxes, the 1-Lipschitz network ranks them higher (AUROC 0.95 against
    # 0.90 with its generated negatives alone).
    shown, own = (auroc(s.score(test_id)["score"], s.score(far)["score"]) for s in (exposed, plain))
    assert shown > own + 0.03, (shown, own)
    with pytest.raises(oodbox.OodboxError, match="outlier boxes are for exposure=true"):
        oodbox.Scorer.fit("ocsdf", train, calibration=val, outliers=far)


def test_recalibrate_equals_a_fit_with_those_calibration_boxes(tmp_path):
    train, val, test = (oodbox.load_boxes(BOXES / f"{n}.safetensors") for n in ("train", "val", "test_id"))
    mixed = oodbox.load_boxes(BOXES / "test_mixed.safetensors")
    on_val = oodbox.Scorer.fit("knn", train, calibration=val)
    on_test = oodbox.Scorer.fit("knn", train, calibration=test)
    again = on_val.recalibrate(test)
    for key in ("score", "p_value", "is_ood"):
        np.testing.assert_array_equal(again.score(mixed)[key], on_test.score(mixed)[key], err_msg=key)
    assert not np.array_equal(on_val.score(mixed)["p_value"], on_test.score(mixed)["p_value"])
    # The CLI's file, and the original left as it was.
    again.save(tmp_path / "again.safetensors")
    on_test.save(tmp_path / "on_test.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "on_test.safetensors").read_bytes()
    assert 0.001 < again.flagged_share_spread < 0.02
    other = dict(test, fingerprint="sha256:another-model")
    with pytest.raises(oodbox.OodboxError, match="another-model"):
        on_val.recalibrate(other)
