"""DICOM input for the manifest datamodule: pixel decoding (12-bit scaling, MONOCHROME1, rescale, modality and VOI
LUTs, windowing, multi-frame refusal) and header columns."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from wsca_lightning.data import ManifestDataModule  # noqa: E402
from wsca_lightning.data.manifest import add_dicom_columns, is_dicom, read_grayscale, read_manifest  # noqa: E402


def _write_dcm(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", manufacturer: str = "Acme",
               spacing: tuple[float, float] = (0.2, 0.25), signed: bool = False, rescale: tuple | None = None,
               extra: Callable[[Dataset], None] | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Manufacturer = manufacturer
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 1 if signed else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    if extra is not None:
        extra(ds)
    ds.save_as(path, enforce_file_format=True)


def test_read_grayscale_scales_12_bit_and_inverts_monochrome1(tmp_path):
    pixels = np.array([[0, 1024, 2048], [3072, 4095, 0]], dtype=np.uint16)
    _write_dcm(tmp_path / "m2.dcm", pixels)
    _write_dcm(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    expected = torch.from_numpy(pixels.astype(np.float32) / 4095.0).unsqueeze(0)
    m2 = read_grayscale(str(tmp_path / "m2.dcm"))
    assert m2.shape == (1, 2, 3) and m2.dtype == torch.float32
    torch.testing.assert_close(m2, expected)
    torch.testing.assert_close(read_grayscale(str(tmp_path / "m1.dcm")), 1.0 - expected)
    # no suffix: recognised by the DICM magic
    (tmp_path / "noext").write_bytes((tmp_path / "m2.dcm").read_bytes())
    assert is_dicom(tmp_path / "noext")
    torch.testing.assert_close(read_grayscale(str(tmp_path / "noext")), expected)


def test_read_grayscale_rescaled_and_signed_use_the_image_range(tmp_path):
    pixels = np.array([[100, 200], [300, 500]], dtype=np.int16)
    _write_dcm(tmp_path / "s.dcm", pixels - 1000, signed=True)
    _write_dcm(tmp_path / "r.dcm", pixels, rescale=(2, -1024))
    expected = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    torch.testing.assert_close(read_grayscale(str(tmp_path / "s.dcm")), expected)
    torch.testing.assert_close(read_grayscale(str(tmp_path / "r.dcm")), expected)


STORED = np.array([[0, 800, 1000], [1064, 1200, 1400], [4095, 1124, 1024]], dtype=np.uint16)  # 12-bit values
HU = STORED.astype(np.float64) - 1024  # with rescale (1, -1024)


def _window(center: float, width: float, function: str | None = None) -> Callable[[Dataset], None]:
    def add(ds: Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = center, width
        if function is not None:
            ds.VOILUTFunction = function
    return add


def _lut_item(descriptor: tuple[int, int, int], data: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUT Data
    return item


def _unit(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).unsqueeze(0)


def test_window_center_width_maps_the_window_onto_unit_range(tmp_path):
    # a CT soft-tissue window (center 40 HU, width 400): what a viewer shows, black below, white above the window
    _write_dcm(tmp_path / "lin.dcm", STORED, rescale=(1, -1024), extra=_window(40, 400))
    _write_dcm(tmp_path / "lin1.dcm", STORED, rescale=(1, -1024), extra=_window(40, 400), photometric="MONOCHROME1")
    _write_dcm(tmp_path / "sig.dcm", STORED, rescale=(1, -1024), extra=_window(40, 400, "SIGMOID"))
    linear = np.clip((HU - 39.5) / 399 + 0.5, 0.0, 1.0)  # PS3.3 C.11.2.1.2.1
    torch.testing.assert_close(read_grayscale(str(tmp_path / "lin.dcm")), _unit(linear))
    torch.testing.assert_close(read_grayscale(str(tmp_path / "lin1.dcm")), _unit(1.0 - linear))
    torch.testing.assert_close(read_grayscale(str(tmp_path / "sig.dcm")), _unit(1 / (1 + np.exp(-4 * (HU - 40) / 400))))


def test_voi_lut_sequence_is_applied_and_preferred_to_the_window(tmp_path):
    from pydicom.pixels import apply_voi_lut

    lut = np.linspace(4095, 0, 256).round().astype(np.uint16)  # an inverting 12-bit ramp over stored 1000..1255

    def add(ds: Dataset) -> None:
        ds.VOILUTSequence = [_lut_item((256, 1000, 12), lut)]
        _window(40, 400)(ds)  # ignored: the LUT wins, as in pydicom's apply_voi_lut

    _write_dcm(tmp_path / "voi.dcm", STORED, extra=add)
    expected = lut[np.clip(STORED.astype(np.int64) - 1000, 0, 255)] / 4095.0
    image = read_grayscale(str(tmp_path / "voi.dcm"))
    torch.testing.assert_close(image, _unit(expected))
    ds = pydicom.dcmread(tmp_path / "voi.dcm")
    torch.testing.assert_close(image, _unit(apply_voi_lut(ds.pixel_array, ds) / 4095.0))


def test_modality_lut_sequence_sets_values_and_output_range(tmp_path):
    lut = (np.arange(4096, dtype=np.int64) ** 2 // 256).astype(np.uint16)  # a non-linear 16-bit modality LUT

    def add(ds: Dataset) -> None:
        ds.ModalityLUTSequence = [_lut_item((4096, 0, 16), lut)]

    _write_dcm(tmp_path / "mlut.dcm", STORED, extra=add)
    values = lut[STORED].astype(np.float64)
    torch.testing.assert_close(read_grayscale(str(tmp_path / "mlut.dcm")), _unit(values / 65535.0))
    # a window on top of it works on the LUT's output (range 0 .. 2**16 - 1)
    _write_dcm(tmp_path / "mlut_win.dcm", STORED, extra=lambda ds: (add(ds), _window(4096, 8192)(ds)))
    torch.testing.assert_close(read_grayscale(str(tmp_path / "mlut_win.dcm")),
                               _unit(np.clip((values - 4095.5) / 8191 + 0.5, 0.0, 1.0)))


# CT_small: signed, rescaled to HU, no window (own min/max); MR_small: signed with Window Center/Width 600/1600
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_sample_files_decode_as_pydicoms_lut_functions_give(name):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = get_testdata_file(name)  # shipped inside pydicom: no download
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = int(ds.BitsStored)
    if "WindowCenter" in ds:  # the window's output range: the stored range through the rescale
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation == 1 else (0, 2**bits - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            low, high = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (low, high))
    elif ds.PixelRepresentation == 1 or float(ds.get("RescaleSlope", 1)) != 1 or float(ds.get("RescaleIntercept", 0)):
        low, high = values.min(), values.max()
    else:
        low, high = 0, 2**bits - 1
    expected = (values.astype(np.float64) - low) / (high - low)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 1.0 - expected
    image = read_grayscale(path)
    assert image.shape == (1, ds.Rows, ds.Columns)
    torch.testing.assert_close(image, _unit(expected))
    assert float(image.max()) > float(image.min())


def test_multi_frame_dicom_is_refused_naming_the_frame_count():
    from pydicom.data import get_testdata_file

    from wsca_lightning.data.manifest import MultiFrameError, check_image

    path = get_testdata_file("rtdose.dcm")  # 15 frames, shipped inside pydicom
    frames = int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)
    assert frames > 1
    with pytest.raises(MultiFrameError, match=f"multi-frame DICOM with {frames} frames"):
        read_grayscale(path)
    assert check_image(path).frames == frames


def test_missing_pydicom_is_a_clear_import_error(tmp_path, monkeypatch):
    _write_dcm(tmp_path / "a.dcm", np.zeros((2, 2), dtype=np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'wsca-lightning\[dicom\]'"):
        read_grayscale(str(tmp_path / "a.dcm"))


H0, W0 = 40, 56
MAKERS = ("Acme", "Zeta")


@pytest.fixture(scope="module")
def dicom_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(0)
    lines = ["image,label,patient"]
    for i in range(42):
        label = i % 3
        pixels = rng.integers(0, 1200, size=(H0, W0)) + 1200 * label
        maker = MAKERS[(i // 3) % 2]
        _write_dcm(root / f"im{i:02d}.dcm", pixels.astype(np.uint16), manufacturer=maker,
                   spacing=(0.1 + 0.01 * (i % 4), 0.2 + 0.01 * (i % 5)),
                   photometric="MONOCHROME1" if i % 7 == 0 else "MONOCHROME2")
        lines.append(f"im{i:02d}.dcm,c{label},p{i // 2}")
    csv = root / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, root


def _dm(csv, root, **kwargs):
    args = dict(manifest=str(csv), root=str(root), target={"column": "label", "type": "categorical"},
                group_column="patient", image_size=[32, 48], check_images=True, batch_size=8, augment=False,
                dicom_columns={"scanner": "Manufacturer", "px_x": "PixelSpacing[1]"},
                metadata={"scanner": {"column": "scanner"}})
    args.update(kwargs)
    dm = ManifestDataModule(**args)
    dm.prepare_data()  # the data is read and checked here, not in the constructor
    dm.setup("fit")
    return dm


def test_manifest_of_dicoms_with_header_columns(dicom_manifest):
    csv, root = dicom_manifest
    dm = _dm(csv, root, channels={"spacing_columns": ["px_x"]}, in_channels=2)
    assert dm.table.header[-2:] == ("scanner", "px_x")
    assert set(dm.table.column("scanner")) == set(MAKERS)
    assert {round(float(c), 6) for c in dm.table.column("px_x")} == {0.2, 0.21, 0.22, 0.23, 0.24}
    dm.setup("fit")
    specs = {s.name: s for s in dm.task_specs}
    assert list(specs["scanner"].class_names) == list(MAKERS)
    assert len(specs["label"].class_names) == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (2, 32, 48)
    item, row = dm.train_dataset[0], dm.table.rows[dm.train_indices[0]]
    assert item["image"].shape == (2, 32, 48)
    assert torch.allclose(item["image"][1], torch.full((32, 48), float(row["px_x"]) * W0 / 48))


def test_dicom_columns_errors(dicom_manifest):
    csv, root = dicom_manifest
    with pytest.raises(ValueError, match="dicom_columns.patient: the manifest already has a column 'patient'"):
        _dm(csv, root, dicom_columns={"patient": "PatientID"})
    with pytest.raises(ValueError, match="dicom_columns.scanner: unknown DICOM keyword 'Manufacturerr'"):
        _dm(csv, root, dicom_columns={"scanner": "Manufacturerr"})


def test_non_dicom_rows_get_empty_cells(dicom_manifest, tmp_path):
    from PIL import Image

    csv, root = dicom_manifest
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    _write_dcm(tmp_path / "b.dcm", np.zeros((4, 4), dtype=np.uint16), manufacturer="Acme")
    (tmp_path / "m.csv").write_text("image,label\na.png,x\nb.dcm,y\n")
    table, problems = add_dicom_columns(read_manifest(tmp_path / "m.csv"),
                                        {"scanner": "Manufacturer", "px_y": "PixelSpacing[0]",
                                         "lat": "Laterality"}, root=tmp_path, image_column="image")
    assert problems == []
    assert table.column("scanner") == ["", "Acme"]
    assert table.column("px_y") == ["", "0.2"]
    assert table.column("lat") == ["", ""]
    assert table.line_numbers == (2, 3)
