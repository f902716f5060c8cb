"""Image files under hostile input for ``data=manifest``: signed and 32-bit-integer TIFFs, the same image under two
names, a corrupt file met during training, multi-frame files."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsca_lightning.data.manifest import MultiFrameError, check_image, read_grayscale
from wsca_lightning.data.manifest_datamodule import ImageLoadError, ManifestDataModule

ROWS = 12


def _tiff_signed_16(path: Path, values: np.ndarray) -> None:
    """A true signed 16-bit TIFF (SampleFormat 2, 16 bits, as ITK / tifffile write CT slices): Pillow writes an int16
    array as 32-bit, so the two's-complement words go out as 16-bit samples with the signed sample format."""
    Image.fromarray(values.astype(np.int16).view(np.uint16)).save(path, tiffinfo={339: 2})


def test_signed_and_32_bit_integer_tiffs_use_their_own_range(tmp_path: Path) -> None:
    hu = np.array([[-1024, -1000, 0], [40, 400, 3071]], dtype=np.int16)  # a CT slice in Hounsfield units
    expected = torch.from_numpy((hu.astype(np.float64) + 1024) / 4095).float().unsqueeze(0)
    _tiff_signed_16(tmp_path / "s16.tif", hu)
    Image.fromarray(hu).save(tmp_path / "from_int16.tif")  # Pillow stores int16 data as signed 32-bit
    big = np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)
    Image.fromarray(big).save(tmp_path / "s32.tif")
    with Image.open(tmp_path / "s16.tif") as im:
        # the file really is signed 16-bit (SampleFormat 2, BitsPerSample 16)
        assert np.ravel(im.tag_v2[339]).tolist() == [2] and np.ravel(im.tag_v2[258]).tolist() == [16]
    for name in ("s16.tif", "from_int16.tif"):
        image = read_grayscale(str(tmp_path / name))
        assert image.dtype == torch.float32 and image.shape == (1, 2, 3)
        torch.testing.assert_close(image, expected)
    torch.testing.assert_close(read_grayscale(str(tmp_path / "s32.tif")), torch.tensor([[[0.0, 0.5, 1.0]]]))
    # a constant image has no range: all zeros, not a division by zero
    Image.fromarray(np.full((2, 2), -5, dtype=np.int32)).save(tmp_path / "flat.tif")
    assert torch.equal(read_grayscale(str(tmp_path / "flat.tif")), torch.zeros(1, 2, 2))
    # unsigned 16-bit keeps its dtype range
    Image.fromarray(np.array([[0, 65535, 13107]], dtype=np.uint16)).save(tmp_path / "u16.tif")
    torch.testing.assert_close(read_grayscale(str(tmp_path / "u16.tif")), torch.tensor([[[0.0, 1.0, 0.2]]]))


def test_multi_frame_tiff_is_refused_naming_the_frame_count(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 4), v, dtype=np.uint8)) for v in (0, 100, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(MultiFrameError, match="multi-frame TIFF file with 3 frames") as err:
        read_grayscale(str(tmp_path / "stack.tif"))
    assert err.value.frames == 3
    assert check_image(str(tmp_path / "stack.tif")).frames == 3


# ------------------------------------------------------------------------------------------ through the datamodule


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _manifest(root: Path, extra: list[tuple[str, bytes | None, str, str]] = (), header: str = "image,label,patient"
              ) -> Path:
    """ROWS distinct 8x8 PNGs (img00.png on line 2, ...), two classes, one patient each; ``extra`` rows
    ``(name, bytes or None for no file, label, patient)`` follow (lines ROWS + 2, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i in range(ROWS):
        (root / f"img{i:02d}.png").write_bytes(_png_bytes(i))
        lines.append(f"img{i:02d}.png,{'ab'[i % 2]},p{i}")
    for name, data, label, patient in extra:
        if data is not None:
            (root / name).write_bytes(data)
        lines.append(f"{name},{label},{patient}")
    csv = root.parent / f"{root.name}.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _dm(csv: Path, root: Path, **kwargs) -> ManifestDataModule:
    args = dict(manifest=str(csv), root=str(root), group_column="patient", image_size=[16, 16], augment=False,
                val_fraction=0.25, test_fraction=0.0, batch_size=4)
    args.update(kwargs)
    dm = ManifestDataModule(**args)
    dm.prepare_data()  # the data is read and checked here, not in the constructor
    dm.setup("fit")
    return dm


def test_same_image_content_under_two_names_is_refused_across_groups(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    copy = ("copy_of_0.png", _png_bytes(0), "a", "p99")  # img00.png's bytes under another name and patient
    csv = _manifest(root, [copy])
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(root.resolve()) + os.sep):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    with pytest.raises(ValueError) as err:
        _dm(csv, root)
    monkeypatch.setattr(builtins, "open", real_open)
    message = str(err.value)
    assert (f"manifest: {csv}: the same image content under two names, 1 time(s) (line {ROWS + 2} 'copy_of_0.png' "
            "of group 'p99' repeats line 2 'img00.png' of group 'p0'; identical file bytes) [column 'image']: "
            "identical images in two groups can land in both train and val: remove one of each pair, or give both "
            "rows the same group in column 'patient'") in message
    # the content check costs no second read: every image file was opened exactly once
    assert sorted(opened) == sorted(str(p) for p in root.resolve().glob("*.png"))

    # one patient's two copies stay in one split: allowed
    same_group = _manifest(tmp_path / "same", [("copy_of_0.png", _png_bytes(0), "a", "p0")])
    dm = _dm(same_group, tmp_path / "same")
    assert len(dm.table.rows) == ROWS + 1
    # without a group column every row is its own group: refused, and told how to group them
    with pytest.raises(ValueError, match=r"line 14 'copy_of_0.png' repeats line 2 'img00.png'; identical file "
                                         r"bytes\) \[column 'image'\]: .*set group_column and give both rows the same"):
        _dm(csv, root, group_column=None)
    # check_images=false reads no image, so it cannot see copies: documented, and the run starts
    assert len(_dm(csv, root, check_images=False).table.rows) == ROWS + 1


def test_multi_frame_and_undecodable_images_are_refused_before_training(tmp_path: Path) -> None:
    stack = io.BytesIO()
    frames = [Image.fromarray(np.full((4, 4), v, dtype=np.uint8)) for v in (0, 80, 160, 240)]
    frames[0].save(stack, "TIFF", save_all=True, append_images=frames[1:])
    root = tmp_path / "data"
    extra = [("stack.tif", stack.getvalue(), "a", "p20"), ("broken.png", _png_bytes(30)[:60], "b", "p21")]
    csv = _manifest(root, extra)
    with pytest.raises(ValueError) as err:
        _dm(csv, root)
    message = str(err.value)
    assert (f"manifest: {csv}: multi-frame image, refused (e.g. 'stack.tif' has 4 frames) (line {ROWS + 2}) "
            "[column 'image']: only single-frame images are used: save the frame to train on as its own "
            "file") in message
    assert "image cannot be decoded (e.g. 'broken.png': " in message
    assert f"(line {ROWS + 3}) [column 'image']: replace the file with a valid PNG, JPEG, TIFF or DICOM" in message


def test_corrupt_image_met_in_training_names_the_file_and_its_manifest_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    csv = _manifest(root, [("broken.png", _png_bytes(40)[:60], "a", "p30")])
    dm = _dm(csv, root, check_images=False, augment=True)  # not decoded up front: the loader meets it
    dm.setup("fit")
    broken = str((root / "broken.png").resolve())
    dataset = dm.train_dataset
    assert broken in dataset.paths and dataset.augment  # so that the WSC view below is a second dataset
    row = dataset.paths.index(broken)
    for view in (dataset, dataset.without_augmentation()):
        with pytest.raises(ImageLoadError) as err:
            view[row]
        message = str(err.value)
        assert message.startswith(f"{csv}: cannot load image {broken!r} (")
        assert f"(line {ROWS + 2}) [column 'image']: replace or repair the file, or remove its row; " \
               "data.check_images=true finds every such file before training" in message
        assert isinstance(err.value.__cause__, Exception)  # the decoder's own error stays attached
    # a file deleted after the checks: still a FileNotFoundError, now naming its manifest line
    gone = next(i for i, p in enumerate(dataset.paths) if p != broken)
    Path(dataset.paths[gone]).unlink()
    line = dm.table.line_numbers[dm.paths.index(dataset.paths[gone])]
    with pytest.raises(FileNotFoundError, match=rf"\(line {line}\) \[column 'image'\]: replace or repair"):
        dataset[gone]
