"""Volumes: phase-label arrays as ``xarray.DataArray``, and their files.

A *volume* is an ``int8`` DataArray of phase labels ``0..K-1`` with dims ``(z, y, x)``;
a 2D image has dims ``(y, x)``. A stack of independent samples puts a leading
``sample`` dim in front: ``(sample, y, x)`` for 2D training images (Micro3Diff case II),
``(sample, z, y, x)`` for 3D data sets. Phase 1 is "the phase of interest" unless named.

Attributes travel with the array (and through NetCDF):

- ``phase_names``: one name per label, e.g. ``["matrix", "inclusion"]``;
- ``voxel_size`` and ``voxel_unit``: edge length of one voxel (default 1 "voxel");
- ``source``: where the data came from (a generator name or a file path);
- ``seed``: the random seed that made it, when one did;
- ``generator_params``: a JSON object of the generating parameters.

NetCDF is the lossless format (compressed, ``engine="netcdf4"``); TIFF stacks, PNG/TIFF
images and ``.npy`` arrays are imported, TIFF and PNG exported. Every write is atomic
(temporary file in the target directory, then ``os.replace``), so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from micro_doe.errors import InputError

VOLUME_DIMS: dict[int, tuple[str, ...]] = {2: ("y", "x"), 3: ("z", "y", "x")}
ALLOWED_DIMS = {
    ("y", "x"),
    ("z", "y", "x"),
    ("sample", "y", "x"),
    ("sample", "z", "y", "x"),
}
MAX_PHASES = 127  # int8 labels
IMAGE_SUFFIXES = {".png", ".tif", ".tiff"}


class VolumeError(InputError):
    """Bad volume data or file; the message names the source and what was expected."""


def make_volume(
    labels: np.ndarray,
    *,
    dims: Sequence[str] | None = None,
    phase_names: Sequence[str] | None = None,
    voxel_size: float = 1.0,
    voxel_unit: str = "voxel",
    source: str = "array",
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    where: str = "labels",
) -> xr.DataArray:
    """Wrap an integer label array as a validated volume DataArray.

    ``dims`` defaults to ``(y, x)`` for 2D and ``(z, y, x)`` for 3D input; pass
    ``("sample", ...)`` for stacks of independent samples. ``where`` names the input in
    error messages (a file path, a CLI option).
    """
    array = _as_labels(np.asarray(labels), where)
    if dims is None:
        if array.ndim not in VOLUME_DIMS:
            raise VolumeError(f"{where}: expected a 2D image or 3D volume, got {array.ndim} dims")
        dims = VOLUME_DIMS[array.ndim]
    dims = tuple(dims)
    if dims not in ALLOWED_DIMS or len(dims) != array.ndim:
        raise VolumeError(
            f"{where}: dims {dims} do not fit an array of shape {array.shape}; "
            f"expected one of {sorted(ALLOWED_DIMS)}"
        )
    n_phases = int(array.max()) + 1 if array.size else 1
    names = list(phase_names) if phase_names is not None else _default_names(max(n_phases, 2))
    if len(names) < n_phases:
        raise VolumeError(f"{where}: {n_phases} phases present but only {len(names)} phase names given")
    if voxel_size <= 0 or not np.isfinite(voxel_size):
        raise VolumeError(f"{where}: voxel_size must be a positive number, got {voxel_size}")
    attrs: dict[str, Any] = {
        "phase_names": names,
        "voxel_size": float(voxel_size),
        "voxel_unit": voxel_unit,
        "source": source,
        "generator_params": json.dumps(dict(params or {}), sort_keys=True, default=_json_default),
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    return xr.DataArray(array, dims=dims, name="phase", attrs=attrs)


def validate_volume(volume: xr.DataArray, where: str = "volume") -> xr.DataArray:
    """Check that ``volume`` is a proper phase-label DataArray; return it unchanged."""
    if not isinstance(volume, xr.DataArray):
        raise VolumeError(f"{where}: expected an xarray.DataArray, got {type(volume).__name__}")
    if tuple(volume.dims) not in ALLOWED_DIMS:
        raise VolumeError(f"{where}: dims {tuple(volume.dims)} not one of {sorted(ALLOWED_DIMS)}")
    if volume.dtype != np.int8:
        raise VolumeError(f"{where}: expected int8 phase labels, got dtype {volume.dtype}")
    if volume.size and int(volume.min()) < 0:
        raise VolumeError(f"{where}: phase labels must be >= 0")
    names = phase_names(volume) if volume.attrs.get("phase_names") is not None else None
    if names is not None and volume.size and int(volume.max()) >= len(names):
        raise VolumeError(f"{where}: labels 0..{int(volume.max())} but {len(names)} phase names {names}; "
                          "expected one name per label")
    return volume


def phase_names(volume: xr.DataArray) -> list[str]:
    """The phase names of a volume, one per label."""
    names = volume.attrs.get("phase_names")
    if names is None:
        return _default_names(int(volume.max()) + 1 if volume.size else 2)
    if isinstance(names, str):  # a single name round-trips from NetCDF as a plain string
        return [names]
    return [str(n) for n in np.atleast_1d(names)]


def generator_params(volume: xr.DataArray) -> dict[str, Any]:
    """The JSON-decoded ``generator_params`` attribute (empty when absent)."""
    return json.loads(volume.attrs.get("generator_params", "{}"))


def phase_index(volume: xr.DataArray, phase: int | str) -> int:
    """Resolve a phase given by label or by name to its label."""
    names = phase_names(volume)
    if isinstance(phase, str) and not phase.lstrip("-").isdigit():
        if phase not in names:
            raise VolumeError(f"phase {phase!r} not found; this volume's phases are {names}")
        return names.index(phase)
    label = int(phase)
    if not 0 <= label < max(len(names), 1):
        raise VolumeError(f"phase {label} out of range; this volume's phases are {names} (labels 0..{len(names) - 1})")
    return label


# ---------------------------------------------------------------- writing (atomic)


class OutputExistsError(InputError):
    """An output path already holds something the program may not replace."""


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an output file that exists (unless ``overwrite``), is a directory, or whose
    folder cannot be created or written; creates nothing."""
    target = Path(path)
    check_name_lengths(target, option)
    if target.is_dir():
        raise OutputExistsError(f"{option} {target}: is a directory; expected a file name")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{option} {target}: exists; pass --overwrite to replace it")
    check_writable_folder(target.parent, option=option, what=str(target))
    return target


def check_name_lengths(path: Path, option: str) -> None:
    """Every part of ``path`` within the file system's name limit (NAME_MAX, 255 on most)."""
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(nearest_existing(path), "PC_NAME_MAX")
    long = next((part for part in path.parts if len(part.encode()) > limit), None)
    if long is not None:
        raise VolumeError(f"{option} {str(path)[:60]}…: a name of {len(long.encode())} bytes; the file system allows {limit}")


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, or its nearest parent that exists."""
    here = Path(os.path.abspath(path))
    while not here.exists():
        here = here.parent
    return here


def check_writable_folder(folder: str | os.PathLike[str], *, option: str = "", what: str | None = None) -> None:
    """The folder exists and is writable, or its nearest existing parent is a writable folder
    (so that it can be created); creates nothing. The message starts with ``option what``."""
    here = nearest_existing(folder)
    label = " ".join(part for part in (option, what or str(folder)) if part)
    if not here.is_dir():
        raise OutputExistsError(f"{label}: {here} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise PermissionError(f"{label}: the folder {here} is not writable")


def is_bundle_dir(path: Path) -> bool:
    """A micro-doe model bundle: a folder whose config.json names a bundle kind."""
    try:
        return json.loads((path / "config.json").read_text()).get("kind") in ("micro3diff", "ldm")
    except (OSError, ValueError, AttributeError):
        return False


def check_bundle_target(path: str | os.PathLike[str], *, overwrite: bool = False, option: str = "--out") -> Path:
    """A bundle may be written to a new path, or replace an existing bundle when ``overwrite``;
    a folder that is not a micro-doe bundle (or a file) is never replaced. Creates nothing."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise OutputExistsError(f"{option} {target}: exists and is not a bundle folder; choose another path")
        if not is_bundle_dir(target):
            if not any(target.iterdir()):
                return target  # an empty folder holds nothing to lose
            raise OutputExistsError(
                f"{option} {target}: the folder exists and is not a micro-doe bundle; refusing to replace it (choose another path)"
            )
        if not overwrite:
            raise OutputExistsError(f"{option} {target}: a bundle already exists there; pass --overwrite to replace it")
    check_writable_folder(target.parent, option=option, what=str(target))
    return target


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.
    The file gets the mode a plain ``open()`` would (0666 less the umask)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside ``path``; on success it takes ``path``'s place whole
    (0777 less the umask, like ``mkdir``). An existing *bundle* there is swapped out only with
    ``overwrite``; any other existing folder or file is never replaced
    (:func:`check_bundle_target`, checked before and again at the swap)."""
    import shutil

    target = Path(path)
    check_bundle_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        check_bundle_target(target, overwrite=overwrite)  # nothing else moved in meanwhile
        mode = 0o777 & ~current_umask()
        os.chmod(staging, mode)
        for sub in staging.rglob("*"):
            if sub.is_dir():
                os.chmod(sub, mode)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "bundle")  # the old bundle steps aside, then the new one moves in
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_netcdf(volume: xr.DataArray | xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a volume (or a Dataset of them) to compressed NetCDF4, atomically."""
    if isinstance(volume, xr.DataArray):
        validate_volume(volume, str(path))
        data = volume.to_dataset(name=volume.name or "phase")
    else:
        data = volume
    encoding = {
        name: {"zlib": True, "complevel": 4}
        for name, var in data.data_vars.items()
        if var.dtype.kind in "iufb" and var.ndim > 0
    }
    with atomic_path(path) as tmp:
        data.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return Path(path)


def write_tiff(volume: xr.DataArray, path: str | os.PathLike[str]) -> Path:
    """Export labels as an uint8 TIFF (a multi-page stack for 3D), attrs in the description."""
    import tifffile

    validate_volume(volume, str(path))
    meta = {k: v for k, v in volume.attrs.items()}
    meta["dims"] = list(volume.dims)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, volume.values.astype(np.uint8), description=json.dumps(meta, default=_json_default))
    return Path(path)


def write_png(image: xr.DataArray, path: str | os.PathLike[str]) -> Path:
    """Export a 2D image as an 8-bit grey PNG, labels spread evenly over 0..255."""
    from PIL import Image

    validate_volume(image, str(path))
    if image.dims != ("y", "x"):
        raise VolumeError(f"{path}: PNG export takes a 2D (y, x) image, got dims {image.dims}")
    k = max(len(phase_names(image)) - 1, 1)
    grey = (image.values.astype(np.int32) * 255 // k).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(grey).save(tmp, format="PNG")
    return Path(path)


def write_volume(volume: xr.DataArray, path: str | os.PathLike[str]) -> Path:
    """Write by suffix: ``.nc`` (NetCDF), ``.tif``/``.tiff`` or ``.png``."""
    suffix = Path(path).suffix.lower()
    writers: dict[str, Callable[[xr.DataArray, str | os.PathLike[str]], Path]] = {
        ".nc": write_netcdf,
        ".tif": write_tiff,
        ".tiff": write_tiff,
        ".png": write_png,
    }
    if suffix not in writers:
        raise VolumeError(f"{path}: unknown output format {suffix!r}; expected one of {sorted(writers)}")
    return writers[suffix](volume, path)


# ---------------------------------------------------------------- reading


def why_missing(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be opened, for an error message: "no such file", "a symbolic link
    loop", "a symbolic link to a missing target", "permission denied", "file name too long"
    (empty when it can be)."""
    p = Path(path)
    try:
        p.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        if err.errno == errno.ENAMETOOLONG:
            return "file name too long"
        if err.errno == errno.EACCES:
            return "permission denied"
        if p.is_symlink():
            return f"a symbolic link to a missing target ({os.readlink(p)})"
        return "no such file"
    return ""


def read_volume(
    path: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    label_map: Mapping[int, int] | None = None,
    variable: str = "phase",
) -> xr.DataArray:
    """Read a volume from NetCDF, a TIFF stack, a PNG/TIFF image or a ``.npy`` array.

    NetCDF files written by :func:`write_netcdf` come back exactly. Other formats carry
    grey values that must become labels, by one of three explicit rules:

    - ``threshold``: label 1 where value > threshold, else 0;
    - ``label_map``: ``{grey value: label}`` covering every value present;
    - neither: accepted only if the values already are labels ``0..K-1`` or the image is
      binary (exactly two grey values, the lower becoming 0 and the higher 1).
    """
    p = Path(path)
    if reason := why_missing(p):
        raise VolumeError(f"{p}: {reason}")
    if p.is_dir():
        raise VolumeError(f"{p}: is a directory; expected a volume file (.nc, .tif, .tiff, .png, .npy)")
    suffix = p.suffix.lower()
    if suffix == ".nc":
        return _read_netcdf(p, variable)
    if suffix == ".npy":
        with open(p, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise VolumeError(f"{p}: not a NumPy .npy file (no .npy header); save arrays with numpy.save")
        try:
            raw = np.load(p, allow_pickle=False)
        except Exception as err:  # numpy raises several types for corrupt files
            raise VolumeError(f"{p}: not a readable .npy array ({err})") from None
    elif suffix in IMAGE_SUFFIXES:
        raw = _read_image(p)
    else:
        raise VolumeError(f"{p}: unknown format {suffix!r}; expected .nc, .tif, .tiff, .png or .npy")
    labels = grey_to_labels(raw, threshold=threshold, label_map=label_map, where=str(p))
    return make_volume(labels, source=str(p), where=str(p), params=_import_params(threshold, label_map))


def grey_to_labels(
    raw: np.ndarray,
    *,
    threshold: float | None = None,
    label_map: Mapping[int, int] | None = None,
    where: str = "image",
) -> np.ndarray:
    """Turn grey values into int8 labels by the rules of :func:`read_volume`."""
    if raw.dtype == bool:
        raw = raw.astype(np.int8)
    if raw.dtype.kind not in "iuf":
        raise VolumeError(f"{where}: expected numeric grey values, got dtype {raw.dtype}")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise VolumeError(f"{where}: contains NaN or infinite values; expected finite grey values or labels")
    if threshold is not None and label_map is not None:
        raise VolumeError(f"{where}: give either a threshold or a label map, not both")
    if threshold is not None:
        return (raw > threshold).astype(np.int8)
    values = np.unique(raw)
    if label_map is not None:
        missing = [v.item() for v in values if int(v) != v or int(v) not in label_map]
        if missing:
            raise VolumeError(f"{where}: grey values {missing[:8]} have no entry in the label map {dict(label_map)}")
        lut_keys = np.array(sorted(label_map), dtype=np.float64)
        lut_vals = np.array([label_map[int(k)] for k in lut_keys], dtype=np.int64)
        return _as_labels(lut_vals[np.searchsorted(lut_keys, raw)], where)
    if values.size == 2 and not (values[0] == 0 and values[1] == 1):
        return (raw == values[1]).astype(np.int8)
    return _as_labels(raw, where)


def _read_netcdf(path: Path, variable: str) -> xr.DataArray:
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            if variable not in ds:
                raise VolumeError(f"{path}: no variable {variable!r}; variables are {sorted(ds.data_vars)}")  # type: ignore[type-var]
            volume = ds[variable].load()
    except VolumeError:
        raise
    except Exception as err:  # netCDF4/HDF5 raise OSError, ValueError, RuntimeError...
        raise VolumeError(f"{path}: not a readable NetCDF file ({err})") from None
    volume = volume.copy(data=_as_labels(volume.values, str(path)))
    volume.attrs.setdefault("source", str(path))
    return validate_volume(volume, str(path))


def _read_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as img:
                if img.mode not in ("1", "L", "I", "I;16", "F"):
                    img = img.convert("L")  # type: ignore[assignment]  # colour images: luminance as the grey value
                return np.asarray(img)
        import tifffile

        return np.asarray(tifffile.imread(path))
    except Exception as err:
        raise VolumeError(f"{path}: not a readable image ({err})") from None


def _as_labels(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.int8)
    if array.dtype.kind not in "iuf":
        raise VolumeError(f"{where}: expected integer phase labels, got dtype {array.dtype}")
    if array.ndim < 2 or array.ndim > 4:
        raise VolumeError(f"{where}: expected a 2D image or 3D volume, got {array.ndim} dims (shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise VolumeError(f"{where}: contains NaN or infinite values; expected integer phase labels")
        if not np.array_equal(array, np.round(array)):
            raise VolumeError(f"{where}: contains non-integer values; expected integer phase labels 0..K-1")
    if array.size and (array.min() < 0 or array.max() > MAX_PHASES - 1):
        raise VolumeError(
            f"{where}: labels range over [{array.min()}, {array.max()}]; expected phase labels 0..{MAX_PHASES - 1} "
            "(grey images: pass a threshold or a label map)"
        )
    return array.astype(np.int8, copy=False)


def _default_names(n: int) -> list[str]:
    return [f"phase{i}" for i in range(n)]


def _import_params(threshold: float | None, label_map: Mapping[int, int] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if threshold is not None:
        params["threshold"] = threshold
    if label_map is not None:
        params["label_map"] = {str(k): v for k, v in label_map.items()}
    return params


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def stack_volumes(volumes: list[xr.DataArray]) -> xr.DataArray:
    """Several volumes as one (sample, z, y, x) DataArray (attrs of the first; seeds listed when every volume has one)."""
    if len(volumes) == 1:
        return volumes[0]
    stacked = xr.concat(volumes, dim="sample", combine_attrs="override")
    stacked.attrs.pop("seed", None)
    if all("seed" in v.attrs for v in volumes):  # volumes from files or other tools may carry none
        stacked.attrs["seeds"] = [int(v.attrs["seed"]) for v in volumes]
    return stacked.astype("int8")
