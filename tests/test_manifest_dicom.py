"""DICOM input for the manifest datamodule: pixel decoding (12-bit scaling, MONOCHROME1, rescale) and header columns."""

from __future__ import annotations

import sys
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
               spacing: tuple[float, float] = (0.2, 0.25), signed: bool = False, rescale: tuple | None = None) -> None:
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
    return ManifestDataModule(**args)


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
