"""Dataset loaders (VOC, COCO, folder) on small trees written here, and the synthetic generator."""
import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from g4seg_core.evaluation.data import (
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    DataError,
    SyntheticDataset,
    open_dataset,
    synthetic_scene,
)
from g4seg_core.evaluation.metrics import IGNORE_LABEL


def save_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_palette(path, labels):
    """A VOC-style palette PNG holding class indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
    img.save(path)


# ---- synthetic ----------------------------------------------------------------------------------

def test_synthetic_scenes_are_seeded():
    a, b = SyntheticDataset(3, seed=1, size=64), SyntheticDataset(3, seed=1, size=64)
    for i in range(3):
        sa, sb = a.load(i), b.load(i)
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.semantic, sb.semantic)
    other = SyntheticDataset(3, seed=2, size=64).load(0)
    assert not np.array_equal(other.image, a.load(0).image)
    assert a.ids == [f"synthetic-1-{i:05d}" for i in range(3)]


def test_synthetic_objects_are_exact_distinct_classes():
    data = SyntheticDataset(6, seed=0, size=96)
    for i in range(len(data)):
        s = data.load(i)
        assert s.image.shape == (96, 120, 3) and s.image.dtype == np.uint8
        assert 2 <= len(s.objects) <= 3
        labels = [o.class_index for o in s.objects]
        assert len(set(labels)) == len(labels)
        union = np.zeros(s.semantic.shape, bool)
        for o in s.objects:
            assert o.label == SYNTHETIC_CLASSES[o.class_index]
            np.testing.assert_array_equal(o.mask, s.semantic == o.class_index)
            assert o.mask.sum() >= 0.01 * o.mask.size
            assert not (union & o.mask).any()
            union |= o.mask
        np.testing.assert_array_equal(union, s.semantic > 0)
        assert not s.ignore.any()


def test_synthetic_masks_follow_the_image_edges():
    # The label map is the one the image was painted with: each object's boundary has a stronger
    # colour gradient than the same outline shifted by 3 px (distractors and textures have edges
    # too, so the comparison is with the object's own outline moved, not with the whole image).
    def band(m):
        m = m.astype(np.uint8)
        return cv2.dilate(m, np.ones((3, 3), np.uint8)) != cv2.erode(m, np.ones((3, 3), np.uint8))

    for seed in range(6):
        image, semantic = synthetic_scene(np.random.default_rng(seed), 128, 160)
        grey = image.astype(np.float32).mean(axis=2)
        grad = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        for c in np.unique(semantic)[1:]:
            m = semantic == c
            shifted = np.mean([grad[band(np.roll(m, d, axis=a))].mean() for d in (-3, 3) for a in (0, 1)])
            assert grad[band(m)].mean() > 1.1 * shifted, (seed, c)


# ---- VOC ----------------------------------------------------------------------------------------

def make_voc(root, ids=("2007_000001", "2007_000002")):
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for k, sid in enumerate(ids):
        save_rgb(voc / "JPEGImages" / f"{sid}.jpg", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
        labels = np.zeros((40, 50), np.uint8)
        labels[5:20, 5:25] = 15  # person
        labels[4, 5:25] = IGNORE_LABEL  # VOC's boundary band
        if k == 1:
            labels[25:35, 30:45] = 8  # cat
        save_palette(voc / "SegmentationClass" / f"{sid}.png", labels)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text(ids[0] + "\n")
    return voc


def test_voc_loader_reads_classes_ignore_and_split(tmp_path):
    make_voc(tmp_path)
    data = open_dataset(f"voc:{tmp_path}")  # finds VOCdevkit/VOC2012 below the folder given
    assert data.ids == ["2007_000001", "2007_000002"] and data.class_names == VOC_CLASSES
    s = data.load(1)
    assert s.image.shape == (40, 50, 3)
    assert [(o.label, o.class_index) for o in s.objects] == [("cat", 8), ("person", 15)]
    assert s.objects[1].mask.sum() == 15 * 20
    assert s.ignore.sum() == 20
    assert len(open_dataset(f"voc:{tmp_path}/VOCdevkit/VOC2012:train")) == 1


def test_voc_loader_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no JPEGImages"):
        open_dataset(f"voc:{tmp_path}")
    make_voc(tmp_path)
    with pytest.raises(DataError, match="split list not found"):
        open_dataset(f"voc:{tmp_path}:test")


def test_voc_predictions_are_read_as_class_indices(tmp_path):
    data = open_dataset(f"voc:{make_voc(tmp_path)}")
    s = data.load(0)
    pred = np.zeros((40, 50), np.uint8)
    pred[0:10, 0:10] = 12
    save_palette(tmp_path / "preds" / "2007_000001.png", pred)
    np.testing.assert_array_equal(data.load_prediction(tmp_path / "preds", s), pred)
    with pytest.raises(DataError, match="label map not found"):
        data.load_prediction(tmp_path / "preds", data.load(1))


# ---- COCO ---------------------------------------------------------------------------------------

def test_coco_loader_reads_instances_and_ignores_crowds(tmp_path):
    save_rgb(tmp_path / "images" / "a.jpg", np.full((30, 40, 3), 128, np.uint8))
    save_rgb(tmp_path / "images" / "b.jpg", np.full((30, 40, 3), 128, np.uint8))
    # Crowd region: rows 20-29, cols 0-9 as uncompressed RLE (column-major runs).
    crowd = np.zeros((30, 40), np.uint8)
    crowd[20:30, 0:10] = 1
    counts, previous, run = [], 0, 0  # run lengths, starting with a run of zeros
    for value in crowd.flatten(order="F"):
        if value == previous:
            run += 1
        else:
            counts.append(run)
            previous, run = value, 1
    counts.append(run)
    ann = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 30, "width": 40},
                   {"id": 9, "file_name": "b.jpg", "height": 30, "width": 40}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [5, 5, 10, 10],
             "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]},
            {"id": 2, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 64.0, "bbox": [25, 5, 8, 8],
             "segmentation": [[25, 5, 33, 5, 33, 13, 25, 13]]},
            {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [0, 20, 10, 10],
             "segmentation": {"counts": counts, "size": [30, 40]}},
            {"id": 4, "image_id": 9, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [0, 20, 10, 10],
             "segmentation": {"counts": counts, "size": [30, 40]}},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = open_dataset(f"coco:{tmp_path / 'ann.json'}:{tmp_path / 'images'}")
    assert data.ids == ["7"]  # image 9 has only a crowd
    assert data.class_names == ("background", "person", "dog")  # ordered by category id
    s = data.load(0)
    assert sorted((o.label, o.class_index) for o in s.objects) == [("dog", 2), ("person", 1)]
    person = next(o for o in s.objects if o.label == "person")
    assert 90 <= person.mask.sum() <= 130 and person.mask[10, 10]
    assert s.ignore.sum() == 100 and s.ignore[25, 5]
    with pytest.raises(DataError, match="needs semantic ground truth"):
        data.load_prediction(tmp_path, s)


def test_coco_loader_errors_are_clear(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="not a COCO annotation file"):
        open_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path / 'images'}")
    with pytest.raises(DataError, match="annotation file not found"):
        open_dataset(f"coco:{tmp_path / 'none.json'}:{tmp_path / 'images'}")


# ---- folder -------------------------------------------------------------------------------------

def test_folder_pairs_images_and_masks_by_name(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.png"):
        save_rgb(tmp_path / "images" / name, (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    save_rgb(tmp_path / "masks" / "a.png", mask)
    save_rgb(tmp_path / "masks" / "b.png", mask // 255)  # 0/1 masks work too
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        data = open_dataset(f"folder:{tmp_path}:leaf")
    assert data.ids == ["a", "b"]
    assert "1 image(s)" in caplog.text
    for i in range(2):
        s = data.load(i)
        assert [(o.label, o.class_index) for o in s.objects] == [("leaf", 1)]
        assert s.objects[0].mask.sum() == 150


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="expected"):
        open_dataset(f"folder:{tmp_path}")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_rgb(tmp_path / "images" / "a.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError, match="no image"):
        open_dataset(f"folder:{tmp_path}")
    save_rgb(tmp_path / "masks" / "a.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError, match="mask a.png is 10x12"):
        open_dataset(f"folder:{tmp_path}").load(0)


@pytest.mark.parametrize("spec, message", [
    ("imagenet:/x", "unknown data kind"),
    ("synthetic:x", "not a whole number"),
    ("synthetic:0", "at least 1"),
    ("synthetic:2:0:8", "at least 32"),
    ("coco:only.json", "coco data spec"),
    ("voc:", "voc data spec"),
])
def test_data_spec_errors(spec, message):
    with pytest.raises(DataError, match=message):
        open_dataset(spec)


def test_weizmann_photos_are_resized_to_their_masks_and_split_without_overlap(weizmann_dir):
    WEIZMANN = weizmann_dir
    dev, test, everything = (open_dataset(f"weizmann:{WEIZMANN}:{s}") for s in ("dev", "test", "all"))
    assert (len(dev), len(test), len(everything)) == (82, 246, 328)
    assert not set(dev.ids) & set(test.ids) and set(dev.ids) | set(test.ids) == set(everything.ids)
    sample = everything.load(0)  # horse001: an 800x590 photo, its mask 315x232
    assert sample.image.shape == (232, 315, 3) and sample.semantic.shape == (232, 315)
    (horse,) = sample.objects
    assert horse.label == "horse" and 0.05 < horse.mask.mean() < 0.45
    with pytest.raises(DataError, match="split must be one of"):
        open_dataset(f"weizmann:{WEIZMANN}:train")
