"""Image folders and labels files as users really have them (data.py): headers, BOMs, CRLF, spaces, tabs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeconvnext.data.folders import LabelledImages
from edgeconvnext.errors import DataError


@pytest.fixture()
def flat(tmp_path: Path) -> Path:
    for i, name in enumerate(("a b.png", "d.png", "ünï.png")):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        "filename,label\r\na b.png,cat\r\nd.png,dog\r\nünï.png,bird\r\n",  # Windows line endings, header
        "\ufefffilename,label\na b.png,cat\nd.png,dog\nünï.png,bird\n",  # spreadsheet export: UTF-8 BOM
        "file_name,class\na b.png,cat\nd.png,dog\nünï.png,bird\n",  # another header spelling
        "# labels\nimage label\na b.png cat\nd.png dog\nünï.png bird\n",  # comment, then a header
        "a b.png cat\nd.png dog\nünï.png bird\n",  # whitespace format, a file name with a space
        "a b.png\tcat\nd.png\tdog\nünï.png\tbird\n",  # tab-separated
        '"a b.png","cat"\nd.png, dog\nünï.png,bird\n',  # quoted CSV fields
    ],
)
def test_labels_file_variants(flat, text):
    (flat / "labels.csv").write_bytes(text.encode("utf-8"))
    ds = LabelledImages.discover(flat)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert [(p.name, y) for p, y in zip(ds.paths, ds.labels, strict=False)] == [
        ("a b.png", 1),
        ("d.png", 2),
        ("ünï.png", 0),
    ]


def test_labels_file_index_labels_keep_their_first_row(flat):
    (flat / "labels.txt").write_text("a b.png 2\nd.png 0\nünï.png 1\n", encoding="utf-8")
    ds = LabelledImages.discover(flat)
    assert ds.labels == [2, 0, 1] and len(ds) == 3


def test_labels_file_not_utf8_is_one_clear_error(flat):
    (flat / "labels.txt").write_bytes("caf\xe9.png 0\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        LabelledImages.discover(flat)


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_image_folder_skips_hidden_and_macos_junk_and_follows_symlinks(tmp_path):
    root, outside = tmp_path / "val", tmp_path / "outside"
    _png(root / "cat" / "0.PNG")  # upper-case extension
    _png(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")  # Jupyter's copies: not data
    _png(root / "cat" / "nested" / "deeper" / "n 1.png")
    (root / "cat" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (root / "__MACOSX" / "cat").mkdir(parents=True)  # left by unzipping a macOS archive: not a class
    _png(root / "dog" / "0.png")
    _png(outside / "1.png")
    (root / "dog" / "linked").symlink_to(outside)  # torchvision's ImageFolder follows these
    (root / "dog" / "loop").symlink_to(root)  # and a cycle must not loop
    ds = LabelledImages.discover(root)
    assert ds.class_names == ["cat", "dog"]
    got = sorted(str(p.relative_to(root)) for p in ds.paths)
    assert got == ["cat/0.PNG", "cat/nested/deeper/n 1.png", "dog/0.png", "dog/linked/1.png"]
    assert ds.labels == [0, 0, 1, 1]


def test_labels_file_written_on_windows_with_backslash_paths(tmp_path):
    _png(tmp_path / "cat" / "0.png")
    _png(tmp_path / "dog" / "1.png")
    (tmp_path / "val.txt").write_bytes(b"cat\\0.png cat\r\ndog\\1.png dog\r\n")
    ds = LabelledImages.discover(tmp_path, tmp_path / "val.txt")
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == ["cat/0.png", "dog/1.png"]
    assert ds.labels == [0, 1]


def test_image_folder_with_a_class_list_named_labels_txt(tmp_path):
    # image-retraining tools write labels.txt as a list of class names beside the class folders: it was read
    # as '<file> <label>' lines and refused; a flat folder (images of its own) still uses its labels file
    _png(tmp_path / "cat" / "0.png")
    _png(tmp_path / "dog" / "1.png")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    ds = LabelledImages.discover(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.labels == [0, 1]
    with pytest.raises(DataError, match="expected '<file> <label>'"):  # asked for explicitly: it is read
        LabelledImages.discover(tmp_path, tmp_path / "labels.txt")
    _png(tmp_path / "2.png")
    (tmp_path / "labels.txt").write_text("2.png dog\n")
    assert [p.name for p in LabelledImages.discover(tmp_path).paths] == ["2.png"]


def test_unreadable_images_are_all_counted_but_only_the_first_ones_logged(tmp_path, caplog):
    from edgeconvnext.data.folders import SKIP_WARNINGS
    from edgeconvnext.models.registry import Preprocess

    _png(tmp_path / "cat" / "ok.png")
    for i in range(SKIP_WARNINGS + 5):
        (tmp_path / "cat" / f"bad{i:02d}.jpg").write_bytes(b"not a jpeg")
    ds = LabelledImages.discover(tmp_path)
    with caplog.at_level("WARNING", logger="edgeconvnext.data.folders"):
        n = sum(len(y) for _, y in ds.batches(Preprocess(img_size=32), batch=4))
    assert n == 1 and len(ds.skipped) == SKIP_WARNINGS + 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == SKIP_WARNINGS + 1 and "counted, not listed" in warnings[-1]


def test_batches_decode_in_parallel_in_order_with_labels_kept_beside_their_images(tmp_path):
    """The threaded decoder gives exactly the serial eval transform's arrays, in file order; an unreadable
    file in the middle of a batch is skipped without shifting the labels of the images after it."""
    from edgeconvnext.data.folders import decode_images, load_images
    from edgeconvnext.data.preprocess import eval_transform, open_rgb
    from edgeconvnext.models.registry import Preprocess

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (20, 26, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpg")
    (tmp_path / "a" / "3.jpg").write_bytes(b"not a jpeg")
    pp = Preprocess(img_size=16)
    ds = LabelledImages.discover(tmp_path)
    serial = {p: eval_transform(open_rgb(p), pp) for p in ds.paths if p.name != "3.jpg" or p.parent.name != "a"}
    xs, ys = zip(*ds.batches(pp, batch=4), strict=True)
    assert [len(y) for y in ys] == [3, 4, 4, 2]  # the first batch lost a/3.jpg
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert y.tolist() == [0] * 6 + [1] * 7
    np.testing.assert_array_equal(x, np.stack(list(serial.values())))
    assert [p.name for p, _ in ds.skipped] == ["3.jpg"]
    # the same through load_images, and a generator closed early (nothing left running)
    arr, used, bad = load_images(ds.paths, pp)
    np.testing.assert_array_equal(arr, x)
    assert used == list(serial) and [p for p, _ in bad] == [tmp_path / "a" / "3.jpg"]
    gen = decode_images(ds.paths, pp, workers=2, ahead=3)
    first = next(gen)
    gen.close()
    assert first[0] == ds.paths[0] and first[2] is None


def test_images_are_listed_in_path_order_component_by_component(tmp_path):
    # list_images sorts strings as Paths compare (by component): "a-b/c" after "a/b" although '-' < '/'
    from edgeconvnext.data.folders import list_images

    rels = ["a/b.png", "a-b/c.png", "a.png", "a/z/y.jpg", "A/q.PNG", "a b/x.webp", "ä/1.png", "a/b.txt", ".h/n.png"]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = list_images(tmp_path)
    expected = sorted(tmp_path / r for r in rels if not r.endswith(".txt") and not r.startswith("."))
    assert got == expected and all(isinstance(p, Path) for p in got)
    assert got.index(tmp_path / "a/b.png") < got.index(tmp_path / "a-b/c.png")
