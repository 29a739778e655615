"""HPatches evaluation end to end: oracle features, planted errors, caches, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets.features import write_features
from datasets.hpatches import (
    adapt_homography,
    image_size,
    list_sequences,
    load_sequence,
    resize_plan,
)
from datasets.hpatches_demo import generate
from evaluators.hpatches import (
    PRESETS,
    Preset,
    apply_overrides,
    evaluate,
    read_d2net_cache,
)
from evaluators.hpatches import main as eval_main
from evaluators.hpatches.outputs import markdown_table
from geometry.homography import points_inside, warp_points
from utils.errors import UserError

SHIFTS = {0: (2.0, 0.0), 1: (0.0, 4.0)}  # point id % 4 -> planted offset (px)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hp")
    generate("builtin", root, num_sequences=2, max_size=200, progress=False)
    return root


@pytest.fixture(scope="module")
def demo_i(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hp_i")
    generate("builtin", root, num_sequences=2, max_size=200, kinds="i", progress=False)
    return root


def write_oracle(
    root: Path, preset: Preset, tag: str, plant: bool = False, descriptors: bool = True
) -> dict[tuple[str, int], dict]:
    """Features of an oracle detector in the preset's frame: image k holds exactly the
    warped points of image 1 (plus planted offsets when ``plant``). Returns, per pair,
    the counts of exact / 2 px / 4 px correspondences written."""
    rng = np.random.default_rng(0)
    planted = {}
    for name in list_sequences(root, exclude=preset.exclude):
        seq = load_sequence(root, name)
        orig0 = image_size(seq.images[0])
        h, w = resize_plan(orig0, preset.resize)[1]
        xs, ys = np.meshgrid(np.linspace(10, w - 11, 10), np.linspace(10, h - 11, 8))
        kp0 = np.stack([xs.ravel(), ys.ravel()], 1) + rng.uniform(-2, 2, (80, 2))
        desc = rng.normal(size=(80, 64)).astype(np.float32)
        scores = rng.uniform(0.5, 1.0, 80).astype(np.float32)

        def save(path, kp, d, s, shape):
            feats = {
                "keypoints": kp.astype(np.float32),
                "scores": s,
                "imsize": np.array([shape[1], shape[0]]),
            }
            if descriptors:
                feats["descriptors"] = d
            write_features(path.with_name(f"{path.name}.{tag}"), feats)

        save(seq.images[0], kp0, desc, scores, (h, w))
        for k in range(2, 7):
            orig1 = image_size(seq.images[k - 1])
            shape1 = resize_plan(orig1, preset.resize)[1]
            H = adapt_homography(seq.homographies[k - 2], orig0, orig1, preset.resize)
            kp1 = warp_points(kp0, H)
            ids = np.arange(80)
            offsets = np.zeros((80, 2))
            if plant:
                for r, off in SHIFTS.items():
                    offsets[ids % 4 == r] = off
            keep = points_inside(kp1, shape1)
            kp1 = kp1 + offsets
            desc1 = desc.copy()
            if plant:
                # Correct matches get a slightly larger descriptor distance than the
                # 4 px ones, so NN mAP ranks all wrong matches first: a known AP.
                noise = 0.15 * rng.normal(size=desc.shape).astype(np.float32)
                desc1[ids % 4 != 1] += noise[ids % 4 != 1]
            save(seq.images[k - 1], kp1[keep], desc1[keep], scores[keep], shape1)
            kind = ids[keep] % 4
            planted[(name, k)] = {
                "n": int(keep.sum()),
                "exact": int((kind > 1).sum()) if plant else len(kind),
                "2px": int((kind == 0).sum()) if plant else 0,
            }
    return planted


def _by_pair(records: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["scene"], r["index"]): r for r in records}


@pytest.mark.parametrize("preset_name", ["superpoint", "d2net", "gluefactory"])
def test_oracle_scores_perfectly(demo, tmp_path, preset_name):
    preset = PRESETS[preset_name]
    write_oracle(demo, preset, f"oracle-{preset_name}")
    result = evaluate(demo, preset, f"oracle-{preset_name}", tmp_path, progress=False)
    s = result.summary["results"]["all"]
    assert result.summary["num_pairs"] == 20
    if preset_name == "superpoint":
        assert s["repeatability"] == pytest.approx(1.0)
        assert s["mle"] == pytest.approx(0.0, abs=1e-4)  # float32 storage
        for eps in (1, 3, 5):
            assert s[f"homography@{eps}px"] == 1.0
        assert s["nn_map"] == pytest.approx(1.0)
        assert s["matching_score"] == pytest.approx(1.0)
        assert (tmp_path / "repeatability_per_sequence.png").is_file()
    elif preset_name == "d2net":
        for t in range(1, 11):
            assert s[f"mma@{t}"] == 1.0
        assert (tmp_path / "mma.png").is_file()
        cache = read_d2net_cache(tmp_path / f"oracle-{preset_name}.npy")
        assert np.allclose(cache["mma"], 1.0) and cache["num_pairs_i"] == 10
    else:
        for t in (1, 3, 5):
            assert s[f"auc_ransac@{t}px"] == pytest.approx(1.0, abs=1e-3)
            assert s[f"auc_dlt@{t}px"] == pytest.approx(1.0, abs=1e-3)
        assert s["median_prec@1px"] == 1.0
    assert (
        (tmp_path / "results.md")
        .read_text()
        .startswith(f"HPatches, preset `{preset_name}`")
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["preset"]["name"] == preset_name
    assert len(json.loads((tmp_path / "pairs.json").read_text())) == 20
    assert list(tmp_path.glob("matches_*.png"))


def test_planted_errors_give_exact_mma(demo, tmp_path):
    preset = PRESETS["d2net"]
    planted = write_oracle(demo, preset, "planted", plant=True)
    records = _by_pair(
        evaluate(demo, preset, "planted", tmp_path, progress=False).records
    )
    for pair, p in planted.items():
        r = records[pair]
        assert r["mma@1"] == pytest.approx(p["exact"] / p["n"])
        assert r["mma@3"] == pytest.approx((p["exact"] + p["2px"]) / p["n"])
        assert r["mma@5"] == 1.0
        assert r["num_matches"] == p["n"]


def test_planted_errors_superpoint_preset(demo_i, tmp_path):
    """Identity homographies: every planted offset is measured exactly."""
    preset = PRESETS["superpoint"]
    planted = write_oracle(demo_i, preset, "planted", plant=True)
    records = _by_pair(
        evaluate(demo_i, preset, "planted", tmp_path, progress=False).records
    )
    for pair, p in planted.items():
        r = records[pair]
        good = p["exact"] + p["2px"]
        assert r["repeatability"] == pytest.approx(good / p["n"])
        assert r["mle"] == pytest.approx(2.0 * p["2px"] / good, abs=1e-4)
        assert r["matching_score"] == pytest.approx(good / p["n"])
        # M wrong matches ranked first, then the G correct ones.
        wrong = p["n"] - good
        ap = sum(k / (wrong + k) for k in range(1, good + 1)) / good
        assert r["nn_map"] == pytest.approx(ap)
        assert r["homography@3px"] == 1.0


def test_d2net_cache_reader_hand_computed(tmp_path):
    # Two sequences (one i, one v), five pairs each, as the D2-Net notebook writes them.
    i_err = {thr: 0.0 for thr in np.arange(1, 16)}
    v_err = {thr: 0.0 for thr in np.arange(1, 16)}
    i_mma = [1.0, 0.5, 0.5, 0.0, 0.25]
    v_mma = [0.2, 0.2, 0.4, 0.4, 0.3]
    for thr in i_err:
        i_err[thr] += np.float64(sum(i_mma))
        v_err[thr] += np.float64(sum(v_mma))
    seq_type = np.array(["i"] * 5 + ["v"] * 5)
    n_feats = np.array([100, 90, 80, 70, 60, 50, 200, 210, 190, 180, 170, 160])
    n_matches = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    cache = np.empty(3, dtype=object)
    cache[:] = [i_err, v_err, [seq_type, n_feats, n_matches]]
    np.save(tmp_path / "method.npy", cache, allow_pickle=True)
    got = read_d2net_cache(tmp_path / "method.npy")
    assert got["name"] == "method"
    assert got["mma"][2] == pytest.approx((2.25 + 1.5) / 10)  # MMA@3
    assert got["mma_i"][0] == pytest.approx(2.25 / 5)
    assert got["mma_v"][0] == pytest.approx(1.5 / 5)
    assert got["num_features"] == pytest.approx(n_feats.mean())
    assert got["num_matches"] == pytest.approx(55.0)


def test_d2net_cache_reader_rejects_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.npy"
    cache = np.empty(3, dtype=object)
    cache[:] = [Evil(), {}, []]
    with open(path, "wb") as f:
        np.lib.format.write_array(f, cache, allow_pickle=True)
    with pytest.raises(UserError, match="evil.npy: not a D2-Net cache"):
        read_d2net_cache(path)


def test_compare_appears_in_table_and_plot(demo, tmp_path):
    preset = PRESETS["d2net"]
    write_oracle(demo, preset, "cmp")
    first = evaluate(demo, preset, "cmp", tmp_path / "a", progress=False)
    assert first.summary["num_failed_pairs"] == 0
    code = eval_main(
        [
            "--data",
            str(demo),
            "--preset",
            "d2net",
            "--features",
            "cmp",
            "--out",
            str(tmp_path / "b"),
            "--compare",
            f"published={tmp_path / 'a' / 'cmp.npy'}",
        ]
    )
    assert code == 0
    table = (tmp_path / "b" / "results.md").read_text()
    assert "| published | 1.000 |" in table and "| cmp | 1.000 |" in table


def test_overrides_rename_preset():
    p = apply_overrides(PRESETS["superpoint"], ["labels=ransac", "top_k=500"])
    assert p.name == "superpoint[labels=ransac,top_k=500]" and p.top_k == 500
    # The header of every table describes the preset as run, not as published.
    assert p.description == "all sequences, gray 240x320, top 500, conf 0.015, NMS 4"
    assert "top 500" in markdown_table(p, []).splitlines()[0]
    # A mapping adds to the preset's extractor options (the train_*.py grammar).
    for item in ('extractor_conf={"nms_radius": 2}', "extractor_conf.nms_radius=2"):
        nms = apply_overrides(PRESETS["superpoint"], [item])
        assert nms.description.endswith("top 1000, conf 0.015, NMS 2")
    with pytest.raises(UserError, match="did you mean 'top_k'"):
        apply_overrides(PRESETS["superpoint"], ["topk=3"])
    with pytest.raises(UserError, match="'name' cannot be overridden"):
        apply_overrides(PRESETS["superpoint"], ["name=mine"])


def _single_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    return err[0]


def _copy_demo(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_inputs(demo, tmp_path, capsys):
    root = _copy_demo(demo, tmp_path / "data")
    preset = PRESETS["d2net"]
    write_oracle(root, preset, "f")
    args = ["--data", str(root), "--preset", "d2net", "--features", "f"]
    args += ["--num-match-plots", "0"]

    (root / "v_brick" / "4.ppm").unlink()
    assert eval_main(args + ["--out", str(tmp_path / "o1")]) == 2
    assert "v_brick/4.ppm: image is missing" in _single_line_error(capsys)
    assert eval_main(args + ["--out", str(tmp_path / "o2"), "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["num_failed_pairs"] == 1 and summary["num_pairs"] == 20
    capsys.readouterr()

    (root / "v_astronaut" / "H_1_3").write_text("1 0 0\n0 1\n0 0 1\n")
    assert eval_main(args + ["--out", str(tmp_path / "o3"), "--skip-bad"]) == 0
    assert "H_1_3: malformed homography" in capsys.readouterr().err
    assert eval_main(args + ["--out", str(tmp_path / "o4")]) == 2
    assert "v_astronaut/H_1_3: malformed" in _single_line_error(capsys)
    # The data set is checked before features are read: repair it to reach them.
    for name in ("v_astronaut/H_1_3", "v_brick/4.ppm"):
        (root / name).write_bytes((demo / name).read_bytes())

    feats = root / "i_brick" / "2.ppm.f"
    data = dict(np.load(feats))
    del data["descriptors"]
    write_features(feats, data)
    assert eval_main(args + ["--out", str(tmp_path / "o5"), "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "o5" / "summary.json").read_text())
    assert summary["num_failed_pairs"] == 1
    capsys.readouterr()
    assert eval_main(args + ["--out", str(tmp_path / "o6")]) == 2
    assert "has no 'descriptors'" in _single_line_error(capsys)

    (root / "i_astronaut" / "5.ppm").write_bytes(b"not an image at all")
    write_oracle_sizes = eval_main(args + ["--out", str(tmp_path / "o7")])
    assert write_oracle_sizes == 2
    assert "i_astronaut/5.ppm: cannot decode image" in _single_line_error(capsys)


def test_wrong_resolution_is_reported(demo, tmp_path, capsys):
    write_oracle(demo, PRESETS["d2net"], "fullres")
    code = eval_main(
        [
            "--data",
            str(demo),
            "--preset",
            "superpoint",
            "--features",
            "fullres",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "evaluates at 320x240" in _single_line_error(capsys)


def test_model_path_extracts_then_rescoring_reuses_cache(demo, tmp_path, capsys):
    root = _copy_demo(demo, tmp_path / "data")
    args = [
        "--data",
        str(root),
        "--preset",
        "superpoint",
        "--model",
        "sift",
        "--out",
        str(tmp_path / "o"),
    ]
    assert eval_main(args) == 0
    files = sorted(root.glob("*/*.ppm.sift-superpoint"))
    assert len(files) == 24
    stamp = [f.stat().st_mtime_ns for f in files]
    first = json.loads((tmp_path / "o" / "summary.json").read_text())["results"]
    assert eval_main(args) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamp
    again = json.loads((tmp_path / "o" / "summary.json").read_text())["results"]
    assert again == first
    assert 0.0 < first["all"]["repeatability"] <= 1.0
    assert (
        eval_main(
            [
                "--data",
                str(root),
                "--preset",
                "superpoint",
                "--features",
                "sift-superpoint",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
