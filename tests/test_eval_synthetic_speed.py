"""The fast Synthetic Shapes evaluation gives exactly the numbers of the plain one.

The plain evaluation below scores one method at a time: it draws the test set again for each,
runs the network or the OpenCV detector batch by batch, NMS, top-k, and pools the matches, and
scores Shi-Tomasi by calling ``goodFeaturesToTrack`` at each of its 100 quality levels.
``evaluate_all`` draws each image once, scores the baselines in the collation (DataLoader
workers) and reads Shi-Tomasi's levels from one call.
"""

import argparse

import cv2
import numpy as np
import torch

from engine.data import collate
from evaluators.synthetic_shapes import (
    SHI_LEVELS,
    Scorer,
    _test_set,
    build_parser,
    classical_response,
    evaluate_all,
    keep_top_k,
    shi_tomasi_response,
)
from geometry.keypoints import nms
from models import build_model

TINY = {
    "name": "magicpoint",
    "channels": [8, 8, 16, 16],
    "head_channels": 16,
    "batch_norm": False,
}


def plain_shi(gray: np.ndarray) -> np.ndarray:
    """Each corner gets the highest level at which goodFeaturesToTrack returns it."""
    resp = np.zeros(gray.shape, np.float32)
    for level in SHI_LEVELS:
        corners = cv2.goodFeaturesToTrack(gray, 100, float(level), 5)
        if corners is None:
            break
        xy = np.round(corners[:, 0]).astype(int)
        resp[xy[:, 1], xy[:, 0]] = level
    return resp


def plain_evaluate(method, model, data_conf, variant, args):
    """One method on one variant, its own pass over its own test set."""
    dataset = _test_set(data_conf, variant == "noisy", args.num_images)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, collate_fn=collate
    )
    scorer = Scorer(args.correct_distance, args.loc_threshold, args.loc_distance)
    for batch in loader:
        images = batch["image"]
        if model is not None:
            # One thread, as the evaluator's loader workers run a network on a CPU.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.inference_mode():
                    heat = model({"image": images})["heatmap"].float()
            finally:
                torch.set_num_threads(threads)
            heat = torch.where(heat > args.threshold, heat, torch.zeros_like(heat))
        else:
            respond = plain_shi if method == "shi" else None
            maps = [
                respond(np.clip(im[0].numpy() * 255, 0, 255).astype(np.float32))
                if respond
                else classical_response(im[0].numpy(), method)
                for im in images
            ]
            heat = torch.from_numpy(np.stack(maps))
        heat = nms(heat, args.nms_radius)
        top_k = args.top_k if model is not None else args.classical_top_k
        heat = keep_top_k(heat, top_k).numpy()
        for b in range(len(images)):
            gt = np.argwhere(batch["keypoint_map"][b].numpy() > 0.5)[:, ::-1]
            scorer.add(
                heat[b], gt.astype(np.float64), batch["primitive"][b], args.floor
            )
    return scorer.results()


def assert_same_results(fast: dict, plain: dict) -> None:
    for key in ("mAP", "mean_primitive_mAP", "localization_error", "n_gt"):
        assert fast[key] == plain[key], key
    assert fast["n_detections"] == plain["n_detections"]
    assert fast["per_primitive"] == plain["per_primitive"]
    for key in ("precision", "recall"):
        assert np.array_equal(fast["curve"][key], plain["curve"][key]), key


def shapes_images(noisy: bool, per_primitive: int = 2) -> list[np.ndarray]:
    dataset = _test_set({"image_size": [64, 96]}, noisy, per_primitive)
    return [dataset[i]["image"][0].numpy() for i in range(len(dataset))]


def test_shi_tomasi_from_one_call_equals_the_level_loop():
    images = shapes_images(False) + shapes_images(True)
    flat = np.full((48, 64), 0.5, np.float32)
    border = np.zeros((48, 64), np.float32)
    border[:20, :30] = 1.0  # the strongest corner response touches the image border
    checked = 0
    for image in [*images, flat, border]:
        gray = np.clip(image * 255.0, 0, 255).astype(np.float32)
        expected = plain_shi(gray)
        assert np.array_equal(shi_tomasi_response(gray), expected)
        assert np.array_equal(classical_response(image, "shi"), expected)
        checked += int(expected.any())
    assert checked >= len(images) // 2  # most images do have scored corners


def test_one_pass_evaluation_equals_one_method_at_a_time():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    data_conf = {"image_size": [64, 96]}
    args: argparse.Namespace = build_parser().parse_args(
        ["--num-images", "2", "--batch-size", "4", "--workers", "1"]
    )
    entries = [("tiny", model, data_conf)]
    entries += [(m, None, data_conf) for m in ("harris", "shi", "fast")]
    for variant in ("clean", "noisy"):
        fast = evaluate_all(entries, variant, args, torch.device("cpu"))
        assert list(fast) == ["tiny", "harris", "shi", "fast"]
        for name, net, conf in entries:
            plain = plain_evaluate(name, net, conf, variant, args)
            assert_same_results(fast[name], plain)
        assert fast["tiny"]["n_detections"] > 0 and fast["shi"]["n_gt"] > 0


def test_test_sets_are_whole_images_whatever_the_training_crop():
    trained = {"image_size": [64, 96], "crop": [40, 56]}
    for noisy in (False, True):  # the noisy variant turns augmentation on
        test = _test_set(trained, noisy, 1)
        whole = _test_set({"image_size": [64, 96]}, noisy, 1)
        for i in (0, len(test) - 1):
            assert test[i]["image"].shape == (1, 64, 96)
            assert torch.equal(test[i]["image"], whole[i]["image"])


def test_entries_with_other_test_sets_are_scored_on_their_own():
    args = build_parser().parse_args(["--num-images", "1", "--workers", "0"])
    entries = [
        ("harris", None, {"image_size": [64, 96]}),
        ("fast", None, {"image_size": [64, 96], "seed": 3}),
    ]
    fast = evaluate_all(entries, "clean", args)
    for name, _, conf in entries:
        assert_same_results(fast[name], plain_evaluate(name, None, conf, "clean", args))


def test_map_by_map_nms_and_top_k_equal_the_batched_ones():
    from evaluators.synthetic_scoring import keep_top_k_map
    from geometry.keypoints import nms_map

    rng = np.random.default_rng(0)
    maps = [
        rng.integers(0, 4, (30, 41)) * (rng.random((30, 41)) < 0.6) for _ in range(40)
    ]
    maps = [m.astype(np.float32) for m in maps]  # many ties
    maps += [classical_response(im, "harris") for im in shapes_images(True, 1)]
    for scores in maps:
        for radius in (1, 2, 4):
            expected = nms(torch.from_numpy(scores)[None], radius)
            assert np.array_equal(nms_map(scores, radius), expected[0].numpy())
            for k in (1, 7, 300, scores.size + 1):
                top = keep_top_k(expected, k)[0].numpy()
                assert np.array_equal(keep_top_k_map(expected[0].numpy(), k), top)
