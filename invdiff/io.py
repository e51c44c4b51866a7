"""Read and write images and scans as ``(B, C, H, W)`` float32 tensors.

Formats, chosen by suffix: PNG, JPEG, TIFF (8/16-bit integer, float TIFF), NPY/NPZ,
DICOM (``pydicom``) and NIfTI (``nibabel``); the last two come with the ``medical``
extra. What ``read_image`` learns about a file (bit depth, dtype, layout, the DICOM
dataset, the NIfTI affine and header) is kept in ``Image.meta`` so that
``write_image(path, x, like=image)`` writes the result back in the same form.

Value conventions:

* integer PNG/JPEG/TIFF: ``x = stored / (2**bits - 1)``, so ``[0, 1]``; float TIFF as stored;
* NPY/NPZ and NIfTI: values as stored (NIfTI's ``scl_slope``/``scl_inter`` applied);
* DICOM: ``x = RescaleSlope * stored + RescaleIntercept``, the modality's units (e.g. HU).
"""

from __future__ import annotations

import copy
import glob
import importlib
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Image", "SUFFIXES", "read_image", "write_image", "derived_series_uid", "find_inputs", "pad_to_multiple"]

#: file suffix (lower case) -> ``Image.kind``
SUFFIXES: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}
#: bit depths each raster format can be written at (32: float32 TIFF)
_BIT_DEPTHS = {"png": (8, 16), "jpeg": (8,), "tiff": (8, 16, 32)}
_MEDICAL_HINT = "pip install 'invdiff[medical]'"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _FormatError(ValueError):
    """A file that was read but holds something this module does not handle (message names the file)."""


@dataclass
class Image:
    """An image or scan as read from disk: ``data`` is float32 ``(B, C, H, W)`` (``B > 1`` for volumes and stacks)."""

    data: Tensor
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# ----------------------------------------------------------------------------- helpers


def _suffix(path: Path) -> str:
    """The lower-case suffix that names the format, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: 128-byte preamble then ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _kind_of(path: Path) -> str | None:
    kind = SUFFIXES.get(_suffix(path))
    if kind is None and path.suffix == "" and path.is_file() and _looks_like_dicom(path):
        kind = "dicom"  # DICOM files often carry no suffix (e.g. IM000001)
    return kind


def _supported() -> str:
    return ", ".join(sorted(set(SUFFIXES)))


def _import_medical(module: str, path: Path) -> Any:
    """Import ``pydicom`` or ``nibabel``, which come with the ``medical`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{path}: {module} is needed for this file but is not installed; run {_MEDICAL_HINT}"
        raise ValueError(message) from None


def _to_tensor(arr: np.ndarray, path: Path) -> Tensor:
    """``(B, C, H, W)`` array -> contiguous float32 tensor; NaN or inf is an error."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{path}: {n} of {arr.size} values are NaN or inf; fix or mask them before restoring")
    return torch.from_numpy(arr)


def _channels_first(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(1, 1, H, W)``; ``(H, W, C)`` -> ``(1, C, H, W)``."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)[None]


def _integer_scale(dtype: np.dtype) -> float:
    """The value that maps to 1.0: the dtype's maximum (1 for bool)."""
    return 1.0 if dtype == np.bool_ else float(np.iinfo(dtype).max)


def _flatten_alpha(x: np.ndarray) -> np.ndarray:
    """``(H, W, 2|4)`` in ``[0, 1]`` with alpha last -> gray/RGB composited on white."""
    color, alpha = x[..., :-1], x[..., -1:]
    return color * alpha + (1.0 - alpha)


# ----------------------------------------------------------------------------- 16-bit PNG
# Pillow reads 16-bit colour PNGs as 8-bit and cannot write them, so 16-bit PNGs go
# through pypng; the IHDR peek below only decides which reader a file needs.


def _png_header(path: Path) -> tuple[int, int] | None:
    """``(bit_depth, colour_type)`` from the IHDR chunk, or ``None`` if this is no PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png16(path: Path) -> np.ndarray:
    """Decode a 16-bit PNG to ``(H, W)`` or ``(H, W, C)`` uint16 with pypng.

    Pillow reads 16-bit gray PNGs but reduces 16-bit RGB(A) to 8 bits, so the
    16-bit files go through pypng, which keeps every bit for all colour types.
    """
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        img = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, ValueError, EOFError, OSError) as err:
        raise _FormatError(f"{path}: cannot decode this 16-bit PNG ({err}); the file is truncated or corrupt") from None
    channels = int(info["planes"])
    if img.shape != (height, width * channels):
        raise _FormatError(f"{path}: PNG pixel data is truncated")
    img = img.reshape(height, width, channels)
    return img[:, :, 0] if channels == 1 else img


def _png16_bytes(img: np.ndarray) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, 1|3)`` uint16 as a 16-bit PNG with pypng (see ``_read_png16``)."""
    import io as _io

    import png

    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    height, width = img.shape[:2]
    greyscale = img.ndim == 2
    buf = _io.BytesIO()
    png.Writer(width, height, greyscale=greyscale, bitdepth=16, compression=6).write(
        buf, img.reshape(height, -1).astype(np.uint16)
    )
    return buf.getvalue()


# ----------------------------------------------------------------------------- readers


def _load_raster(path: Path, kind: str) -> tuple[np.ndarray, str]:
    """The stored pixels of a PNG / JPEG / TIFF as ``(H, W)`` or ``(H, W, C)``, and the TIFF's layout."""
    if kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
        if arr.ndim == 3 and axes[0] in "CS" and axes[-1] != "S":
            return arr.transpose(1, 2, 0), "CHW"  # planar (C, H, W) storage
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and axes[-1] != "S"):
            raise _FormatError(
                f"{path}: TIFF holds a {arr.ndim}-D series with axes {axes}; save each image as its own 2-D file"
            )
        return arr, "HWC"
    header = _png_header(path) if kind == "png" else None
    if header is not None and header[0] == 16:
        return _read_png16(path), "HWC"
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        if im.mode in ("P", "PA"):  # palette: expand, keeping transparency
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if im.mode == "1" else "RGB")
        return np.asarray(im), "HWC"


def _read_raster(path: Path, kind: str) -> tuple[np.ndarray, dict[str, Any]]:
    """PNG / JPEG / TIFF -> ``(1, C, H, W)``, integers divided by their dtype's maximum."""
    try:
        arr, layout = _load_raster(path, kind)
    except _FormatError:
        raise
    except Exception as err:  # Pillow, tifffile and zlib raise many types for a bad file
        raise ValueError(f"{path}: cannot read as {kind.upper()} ({err}); the file may be corrupt") from None
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{path}: image has {arr.shape[2]} channels; only gray, gray+alpha, RGB and RGBA are read")
    meta: dict[str, Any] = {"layout": layout, "dtype": str(arr.dtype)}
    if np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        meta.update(bit_depth=8 * arr.dtype.itemsize, scale=1.0, value_range=None)
    elif arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        scale = _integer_scale(arr.dtype)
        lowest = 0.0 if arr.dtype == np.bool_ else np.iinfo(arr.dtype).min / scale
        x = arr.astype(np.float64) / scale
        meta.update(bit_depth=1 if arr.dtype == np.bool_ else 8 * arr.dtype.itemsize, scale=scale)
        meta["value_range"] = (lowest, 1.0)
    else:
        raise ValueError(f"{path}: pixel type {arr.dtype} is not supported; save as 8/16-bit integer or float")
    if x.ndim == 3 and x.shape[2] in (2, 4):
        meta["alpha"] = True
        meta["alpha_mask"] = np.asarray(x[..., -1], dtype=np.float32).copy()  # (H, W): 0 = transparent
        x = _flatten_alpha(x)
    return _channels_first(x), meta


def _as_bchw(arr: np.ndarray, path: Path, what: str) -> tuple[np.ndarray, str]:
    """A 2/3/4-D array -> ``(B, C, H, W)`` and the layout it came in."""
    if arr.ndim == 2:
        return arr[None, None], "HW"
    if arr.ndim == 3:
        if 1 <= arr.shape[0] <= 4:
            return arr[None], "CHW"
        if 1 <= arr.shape[2] <= 4:
            return arr.transpose(2, 0, 1)[None], "HWC"
        raise ValueError(
            f"{path}: {what} of shape {arr.shape} is ambiguous; store it as (C, H, W) or (H, W, C) with C in 1..4"
        )
    if arr.ndim == 4:
        return arr, "BCHW"
    raise ValueError(f"{path}: {what} has shape {arr.shape}; expected (H, W), (C, H, W), (H, W, C) or (B, C, H, W)")


def _read_numpy(path: Path, kind: str) -> tuple[np.ndarray, dict[str, Any]]:
    """NPY / NPZ -> ``(B, C, H, W)``, values as stored."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path}: cannot read as {kind.upper()} ({err}); the file may be corrupt") from None
    key = None
    if kind == "npz":
        with loaded:
            keys = list(loaded.files)
            key = next((k for k in ("image", "x") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(
                    f"{path}: NPZ holds arrays {keys}; keep a single array or name the image 'image' or 'x'"
                )
            arr = loaded[key]
    else:
        arr = loaded
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{path}: array has dtype {arr.dtype}; store real numbers (float or integer)")
    x, layout = _as_bchw(arr, path, "array")
    return x, {"layout": layout, "dtype": str(arr.dtype), "key": key, "value_range": None}


def _read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """DICOM -> ``(frames, C, H, W)`` in the modality's units (Rescale Slope/Intercept applied)."""
    pydicom = _import_medical("pydicom", path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise ValueError(f"{path}: cannot read as DICOM ({err}); the file may be corrupt") from None
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM holds no integer PixelData; float pixel data and non-images are not read")
    try:
        stored = ds.pixel_array
    except Exception as err:
        raise ValueError(f"{path}: cannot read as DICOM pixel data ({err}); the file may be corrupt") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if samples not in (1, 3):
        raise ValueError(f"{path}: DICOM has {samples} samples per pixel; only 1 (gray) or 3 (RGB) are read")
    arr = stored.reshape(frames, ds.Rows, ds.Columns, samples).transpose(0, 3, 1, 2)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    bits = int(ds.BitsStored)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    x = arr.astype(np.float64) * slope + intercept
    meta = {
        "dataset": ds,
        "slope": slope,
        "intercept": intercept,
        "dtype": str(stored.dtype),
        "bit_depth": bits,
        "value_range": tuple(sorted((lo * slope + intercept, hi * slope + intercept))),
        "photometric": str(getattr(ds, "PhotometricInterpretation", "")),
    }
    return x, meta


def _read_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """NIfTI 2-D image or 3-D volume -> ``(slices, 1, H, W)``, slices along the last voxel axis."""
    nib = _import_medical("nibabel", path)
    try:
        img = nib.load(path)
        vol = np.asarray(img.dataobj, dtype=np.float64)  # applies scl_slope / scl_inter
    except Exception as err:
        raise ValueError(f"{path}: cannot read as NIfTI ({err}); the file may be corrupt") from None
    shape = vol.shape
    while vol.ndim > 3 and vol.shape[-1] == 1:  # trailing singleton time/vector axes
        vol = vol[..., 0]
    if vol.ndim not in (2, 3):
        raise ValueError(f"{path}: NIfTI has shape {shape}; only 2-D images and 3-D volumes are read")
    ndim = vol.ndim
    if ndim == 2:
        vol = vol[:, :, None]
    x = np.moveaxis(vol, 2, 0)[:, None]  # (i, j, k) -> (k, 1, i, j)
    meta = {
        "affine": img.affine.copy(),
        "header": img.header.copy(),
        "slice_axis": 2,
        "shape": shape,
        "ndim": ndim,
        "dtype": str(img.get_data_dtype()),
        "value_range": None,
    }
    return x, meta


def read_image(path: str | os.PathLike) -> Image:
    """Read one PNG/JPEG/TIFF/NPY/NPZ/DICOM/NIfTI file as a float32 ``(B, C, H, W)`` :class:`Image`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; pass a file, or use find_inputs() to list the images in it")
    kind = _kind_of(path)
    if kind is None:
        raise ValueError(f"{path}: unsupported suffix {_suffix(path) or '(none)'!r}; use one of {_supported()}")
    if kind in ("png", "jpeg", "tiff"):
        x, meta = _read_raster(path, kind)
    elif kind in ("npy", "npz"):
        x, meta = _read_numpy(path, kind)
    elif kind == "dicom":
        x, meta = _read_dicom(path)
    else:
        x, meta = _read_nifti(path)
    if 0 in x.shape:
        raise ValueError(f"{path}: image is empty (shape {tuple(x.shape)})")
    return Image(data=_to_tensor(x, path), kind=kind, meta=meta, path=path)


# ----------------------------------------------------------------------------- writers


def _as_array(data: Tensor | np.ndarray, path: Path) -> np.ndarray:
    """A tensor/array ``(B, C, H, W)``, ``(C, H, W)`` or ``(H, W)`` -> float64 ``(B, C, H, W)``."""
    arr = data.detach().to("cpu", torch.float64).numpy() if isinstance(data, Tensor) else np.asarray(data, np.float64)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"{path}: data has shape {arr.shape}; pass (B, C, H, W), (C, H, W) or (H, W)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: data holds NaN or inf values; nothing was written")
    return arr


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the
    umask), not ``mkstemp``'s private ``0o600``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_suffix(path))
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """Clip to ``[0, 1]`` and round ``x * (2**bits - 1)`` half to even -> uint8/uint16."""
    scale = 2**bits - 1
    return np.rint(np.clip(x, 0.0, 1.0) * scale).astype(np.uint8 if bits == 8 else np.uint16)


def _write_raster(tmp: Path, arr: np.ndarray, kind: str, bits: int, quality: int) -> None:
    """One ``(1, 1|3, H, W)`` image as PNG / JPEG / TIFF at ``bits`` (32: float32 TIFF, unclipped)."""
    img = arr[0].transpose(1, 2, 0)  # (H, W, C)
    if img.shape[2] == 1:
        img = img[:, :, 0]
    if kind == "tiff":
        import tifffile

        out = img.astype(np.float32) if bits == 32 else _quantise(img, bits)
        tifffile.imwrite(tmp, out, photometric="minisblack" if out.ndim == 2 else "rgb")
        return
    if kind == "png" and bits == 16:
        tmp.write_bytes(_png16_bytes(_quantise(img, 16)))
        return
    from PIL import Image as PILImage

    options = {"quality": quality, "subsampling": 0} if kind == "jpeg" else {}  # 4:4:4 chroma
    PILImage.fromarray(_quantise(img, 8)).save(tmp, format="JPEG" if kind == "jpeg" else "PNG", **options)


def _write_numpy(tmp: Path, arr: np.ndarray, kind: str, like: Image | None) -> None:
    """float32 NPY / NPZ, in ``like``'s layout and NPZ key when it came from one."""
    out = arr.astype(np.float32)
    layout, key = "BCHW", "image"
    if like is not None and like.kind in ("npy", "npz"):
        layout, key = like.meta["layout"], like.meta.get("key") or "image"
    # Back to the source's layout when the data still fits it; (B, C, H, W) otherwise.
    if out.shape[0] == 1 and layout == "HW" and out.shape[1] == 1:
        out = out[0, 0]
    elif out.shape[0] == 1 and layout == "CHW":
        out = out[0]
    elif out.shape[0] == 1 and layout == "HWC":
        out = out[0].transpose(1, 2, 0)
    with open(tmp, "wb") as f:
        if kind == "npz":
            np.savez(f, **{key: out})
        else:
            np.save(f, out)


def derived_series_uid(like: Image, salt: str = "") -> str:
    """A SeriesInstanceUID for the series derived from ``like``'s series: the same for every slice of it.

    Derived from the source SeriesInstanceUID and ``salt`` (e.g. the output folder), so
    the restored slices of one source series, written file by file, form one new series.
    """
    from pydicom.uid import generate_uid

    source = str(getattr(like.meta.get("dataset"), "SeriesInstanceUID", ""))
    return str(generate_uid(entropy_srcs=["invdiff derived series", source, salt]))


def _write_dicom(tmp: Path, arr: np.ndarray, like: Image, description: str | None, pydicom: Any,
                 series_uid: str | None = None) -> None:  # fmt: skip
    """A derived DICOM instance: ``like``'s dataset with new UIDs, DERIVED ImageType, re-encoded pixels."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = like.meta["dataset"]
    ds = copy.deepcopy(src)
    frames, channels, height, width = arr.shape
    # Values -> stored integers with the source's slope/intercept, clipped to BitsStored.
    slope, intercept = like.meta["slope"], like.meta["intercept"]
    bits, allocated = int(src.BitsStored), int(src.BitsAllocated)
    signed = int(getattr(src, "PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored = np.clip(np.rint((arr - intercept) / slope), lo, hi)
    dtype = np.dtype(f"{'<i' if signed else '<u'}{allocated // 8}")
    stored = stored.astype(dtype).transpose(0, 2, 3, 1)  # (frames, H, W, samples): sample-interleaved
    if channels == 3:
        ds.PlanarConfiguration = 0
    if getattr(src, "PhotometricInterpretation", "").startswith("YBR"):
        ds.PhotometricInterpretation = "RGB"  # pixel_array decoded YBR to RGB
    # Geometry: new size, pixel spacing scaled so the field of view is kept.
    if (height, width) != (int(src.Rows), int(src.Columns)) and "PixelSpacing" in src:
        row, col = (float(v) for v in src.PixelSpacing)
        ds.PixelSpacing = [row * int(src.Rows) / height, col * int(src.Columns) / width]
    ds.Rows, ds.Columns = height, width
    if frames > 1 or "NumberOfFrames" in src:
        ds.NumberOfFrames = frames
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if allocated > 8 else "OB"
    # Uncompressed little-endian pixel data from here on.
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or syntax.is_compressed or not syntax.is_little_endian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if int(pydicom.__version__.split(".")[0]) < 3:
            ds.is_little_endian, ds.is_implicit_VR = True, False
    # A derived series: new instance and series UIDs, ImageType DERIVED\SECONDARY.
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    image_type = list(getattr(src, "ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    if description is not None:
        ds.SeriesDescription = description
    ds.DerivationDescription = description or "restored with invdiff"
    pydicom.dcmwrite(tmp, ds)


def _write_nifti(tmp: Path, arr: np.ndarray, like: Image | None, nib: Any) -> None:
    """Stack ``(slices, 1, H, W)`` back along the source's slice axis with its affine and header (float32)."""
    vol = np.moveaxis(arr[:, 0].astype(np.float32), 0, -1)  # (k, i, j) -> (i, j, k)
    affine, header = np.eye(4), None
    if like is not None and like.kind == "nifti":
        affine, header = like.meta["affine"], like.meta["header"].copy()
        vol = np.moveaxis(vol, -1, like.meta["slice_axis"])
        if like.meta["ndim"] == 2 and vol.shape[-1] == 1:
            vol = vol[:, :, 0]
    elif vol.shape[-1] == 1:
        vol = vol[:, :, 0]
    img = nib.Nifti1Image(vol, affine, header=header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, tmp)


def write_image(
    path: str | os.PathLike,
    data: Tensor | np.ndarray,
    like: Image | None = None,
    *,
    bit_depth: int | None = None,
    quality: int = 95,
    description: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """Write ``data`` ``(B, C, H, W)`` atomically in the format of ``path``'s suffix, shaped like ``like``.

    PNG/JPEG/TIFF hold one gray or RGB image (``B = 1``, ``C`` in {1, 3}): values are
    clipped to ``[0, 1]`` and rounded to the nearest of ``2**bits - 1`` levels
    (``bit_depth`` 8 by default or ``like``'s 8/16; 16 for PNG/TIFF, 32 = float TIFF
    written unclipped; JPEG 8 only, 4:4:4 chroma, at ``quality``). NPY/NPZ: float32 as is, in
    ``like``'s layout when it was read from NPY/NPZ. DICOM needs ``like`` read from
    DICOM and writes a derived instance (new SOP/Series UIDs, identifying tags kept,
    values re-encoded with its slope/intercept and clipped to its stored range;
    ``description`` sets SeriesDescription; ``series_uid`` gives the new series its UID,
    e.g. ``derived_series_uid(like)`` for every slice of one series). NIfTI: float32 with ``like``'s affine and
    header, slices stacked back along its slice axis (identity affine without ``like``).
    Returns the path written.
    """
    path = Path(path)
    kind = SUFFIXES.get(_suffix(path))
    if kind is None:
        raise ValueError(f"{path}: unsupported suffix {_suffix(path) or '(none)'!r}; use one of {_supported()}")
    if like is not None and not isinstance(like, Image):
        raise ValueError(f"{path}: like must be an Image from read_image(), got {type(like).__name__}")
    arr = _as_array(data, path)
    if kind in ("png", "jpeg", "tiff"):
        if arr.shape[0] != 1 or arr.shape[1] not in (1, 3):
            raise ValueError(
                f"{path}: {kind.upper()} holds one gray or RGB image but data has shape {arr.shape}; "
                "write one (1, 1|3, H, W) image per file"
            )
        if bit_depth is None:  # the source's depth where this format can hold it, else 8
            source = like.meta.get("dtype") if like is not None and like.kind in ("png", "jpeg", "tiff") else None
            bit_depth = {"uint16": 16, "float32": 32, "float64": 32}.get(source, 8)
            bit_depth = bit_depth if bit_depth in _BIT_DEPTHS[kind] else 8
        allowed = _BIT_DEPTHS[kind]
        if bit_depth not in allowed:
            raise ValueError(f"{path}: bit_depth {bit_depth} is not available for {kind.upper()}; use one of {allowed}")
        bits = bit_depth
        _atomic_write(path, lambda tmp: _write_raster(tmp, arr, kind, bits, quality))
    elif kind in ("npy", "npz"):
        _atomic_write(path, lambda tmp: _write_numpy(tmp, arr, kind, like))
    elif kind == "dicom":
        if like is None or like.kind != "dicom":
            raise ValueError(
                f"{path}: writing DICOM needs like=<Image read from the source DICOM file> to copy its tags from"
            )
        samples = int(getattr(like.meta["dataset"], "SamplesPerPixel", 1))
        if arr.shape[1] != samples:
            raise ValueError(
                f"{path}: data has {arr.shape[1]} channels but the DICOM source has {samples} samples per pixel"
            )
        pydicom = _import_medical("pydicom", path)
        _atomic_write(path, lambda tmp: _write_dicom(tmp, arr, like, description, pydicom, series_uid))
    else:
        if arr.shape[1] != 1:
            raise ValueError(f"{path}: NIfTI slices must have 1 channel, got data of shape {arr.shape}")
        if like is not None and like.kind == "nifti" and arr.shape[0] != like.data.shape[0]:
            raise ValueError(
                f"{path}: data has {arr.shape[0]} slices but the NIfTI source has {like.data.shape[0]}; "
                "write all slices of the volume together"
            )
        nib = _import_medical("nibabel", path)
        _atomic_write(path, lambda tmp: _write_nifti(tmp, arr, like, nib))
    return path


# ----------------------------------------------------------------------------- inputs


def file_seed(seed: int, name: str) -> int:
    """A per-file seed that does not depend on the order of the inputs."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def find_inputs(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursive, sorted) and glob patterns into a list of supported image files."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            if _kind_of(path) is None:
                raise ValueError(
                    f"{path}: unsupported suffix {_suffix(path) or '(none)'!r}; use one of {_supported()}"
                )
            found.append(path)
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and _kind_of(p) is not None
            )
            if not files:
                raise ValueError(f"{path}: folder holds no supported images ({_supported()})")
            found.extend(files)
        elif any(c in str(pattern) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
            files = [p for p in matches if p.is_file() and _kind_of(p) is not None]
            if not files:
                what = f"{len(matches)} paths but no supported image" if matches else "nothing"
                raise FileNotFoundError(f"{pattern}: pattern matched {what}; check the pattern and suffixes")
            found.extend(files)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder; check the path")
    unique: dict[Path, Path] = {}  # first occurrence wins, order kept
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


# ----------------------------------------------------------------------------- padding


def _reflect_pad(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Pad bottom/right by reflection, repeating it when the pad exceeds the image (edge copy for size 1)."""
    while pad_h > 0 or pad_w > 0:
        h, w = x.shape[-2:]
        step_h, step_w = min(pad_h, max(h - 1, 0)), min(pad_w, max(w - 1, 0))
        if step_h == 0 and step_w == 0:  # a single row/column cannot be reflected
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def pad_to_multiple(x: Tensor, m: int | Sequence[int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Reflect-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``m``; ``crop`` undoes it.

    ``crop(y)`` also accepts ``y`` scaled by an integer factor ``k`` (e.g. the output of
    ``k``-times super-resolution of the padded image) and returns ``(..., k H, k W)``.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    m_h, m_w = (m, m) if isinstance(m, int) else tuple(m)
    if not (isinstance(m_h, int) and isinstance(m_w, int) and m_h >= 1 and m_w >= 1):
        raise ValueError(f"m must be a positive integer or a pair of them, got {m}")
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % m_h, -w % m_w
    x_pad = _reflect_pad(x, pad_h, pad_w)
    hp, wp = h + pad_h, w + pad_w

    def crop(y: Tensor) -> Tensor:
        k = y.shape[-2] // hp
        if k < 1 or y.shape[-2] != k * hp or y.shape[-1] != k * wp:
            raise ValueError(
                f"crop expects (..., {hp}, {wp}) or an integer multiple of it, got {tuple(y.shape)}"
            )
        return y[..., : k * h, : k * w]

    return x_pad, crop
