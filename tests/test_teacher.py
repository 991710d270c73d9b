"""Cached teacher targets: the same pixels as the teacher run on the fly, for every patch geometry; keyed so a
changed teacher or image is never served a stale target; a damaged entry is rebuilt, never used."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dsclora.data.images import to_array, to_tensor
from dsclora.data.patches import PatchDataset, TrainImage
from dsclora.models.ensemble import SelfEnsemble
from dsclora.train.teacher import TeacherTargets
from dsclora.weights.load import load


@pytest.fixture(scope="module")
def teacher():
    return load(None).module  # the embedded SPAN-tiny-shaped model


@pytest.fixture
def lr_folder(tmp_path: Path, sample_photo) -> tuple[Path, np.ndarray]:
    from PIL import Image

    folder = tmp_path / "lr"
    folder.mkdir()
    lr = sample_photo[180:226, 200:253]  # 46 x 53 LR image
    Image.fromarray(lr).save(folder / "a.png")
    return folder, lr


def test_cached_patches_equal_the_teacher_run_on_the_transformed_image(tmp_path: Path, teacher, lr_folder) -> None:
    """Independent reference: the x8 ensemble is equivariant, so the target of a flipped / rotated patch must equal
    the ensemble run on the whole flipped / rotated LR image, cropped where the patch went."""
    folder, lr = lr_folder
    targets = TeacherTargets(teacher, "sha-of-weights", 8, 4, root=tmp_path / "cache")
    dataset = PatchDataset([TrainImage(folder / "a.png", has_hr=False)], 4, 20, seed=7, with_hr=False)
    dataset.set_targets(targets.get_all([dataset.lr_image(0)], progress=False))
    ensemble = SelfEnsemble(teacher, 8)
    seen = set()
    for position in range(40):
        sample = dataset[position]
        rng = np.random.default_rng([7, position])  # the patch geometry, as the dataset draws it
        top, left = int(rng.integers(0, 46 - 20 + 1)), int(rng.integers(0, 53 - 20 + 1))
        flip, mirror, turns = int(rng.integers(0, 2)), int(rng.integers(0, 2)), int(rng.integers(0, 4))
        seen.add((flip, mirror, turns))
        lr_t = to_tensor(lr)
        if flip:
            lr_t = lr_t.flip(2)
        if mirror:
            lr_t = lr_t.flip(3)
        lr_t = torch.rot90(lr_t, turns, (2, 3))
        # where the patch's top-left LR pixel went under the same transform
        h, w = 46, 53
        y0 = (h - 20 - top) if flip else top
        x0 = (w - 20 - left) if mirror else left
        for _ in range(turns):  # np.rot90 (counter-clockwise): (y, x) in an H x W image -> (W - 1 - x, y)
            y0, x0, h, w = w - 20 - x0, y0, w, h
        with torch.no_grad():
            whole = ensemble(lr_t)
        expected = whole[0, :, y0 * 4 : (y0 + 20) * 4, x0 * 4 : (x0 + 20) * 4]
        assert torch.equal(sample["lr"], lr_t[0, :, y0 : y0 + 20, x0 : x0 + 20])
        assert (sample["target"] - expected).abs().max().item() <= 2.5e-4  # float16 storage: ~0.06 grey levels
    assert len(seen) >= 8  # flips and rotations really covered


def test_cache_is_reused_and_keyed_by_teacher_and_image(tmp_path: Path, teacher, lr_folder) -> None:
    _, lr = lr_folder
    root = tmp_path / "cache"
    first = TeacherTargets(teacher, "teacher-a", 8, 4, root=root)
    sr = first.get(lr)
    assert sr.dtype == np.float16 and sr.shape == (46 * 4, 53 * 4, 3)
    with torch.no_grad():
        exact = to_array(SelfEnsemble(teacher, 8)(to_tensor(lr)))
    assert np.abs(sr.astype(np.float32) - exact).max() <= 2.5e-4
    calls = []
    first.compute = lambda image: calls.append(image) or sr  # any recomputation would be recorded
    assert np.array_equal(first.get(lr), sr) and not calls  # served from disk
    other_teacher = TeacherTargets(teacher, "teacher-b", 8, 4, root=root)
    single_pass = TeacherTargets(teacher, "teacher-a", 1, 4, root=root)
    assert len({first.path(lr), other_teacher.path(lr), single_pass.path(lr)}) == 3  # new weights or ensemble
    changed = lr.copy()
    changed[0, 0, 0] ^= 1
    assert first.path(changed) != first.path(lr)  # one changed pixel, a new entry


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "garbage"])
def test_damaged_entry_is_rebuilt_not_used(tmp_path: Path, teacher, lr_folder, damage: str) -> None:
    _, lr = lr_folder
    targets = TeacherTargets(teacher, "w", 1, 4, root=tmp_path / "cache")
    good = targets.get(lr)
    path = targets.path(lr)
    data = bytearray(path.read_bytes())
    if damage == "flip_a_byte":
        data[len(data) // 2] ^= 0x40  # inside the SR array: the digest no longer matches
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"not an npz at all")
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = targets.get(lr)
    assert any("damaged" in str(w.message) for w in caught)
    assert np.array_equal(again, good)  # recomputed, identical
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is intact
        assert np.array_equal(targets.read(lr), good)
