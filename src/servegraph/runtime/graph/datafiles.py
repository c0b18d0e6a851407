"""Parameters and reference data of transform steps, read from files once at start.

Parameter files (scalers): JSON or YAML mapping names to lists of numbers (``mean``,
``scale``, ``min``, ``max``), or a NumPy ``.npz`` holding arrays of those names.
Reference data (outlier and drift detectors): rows x features, as ``.npy``, ``.npz`` (the
array named ``reference``, else the only one) or ``.csv`` (comma-separated numbers, one
optional header row).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml


def load_params(path: Path) -> dict[str, np.ndarray]:
    """Named parameter arrays from a JSON, YAML or .npz file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
        text = path.read_text()
        raw = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameters from {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"parameter file {path} must map names to lists of numbers")
    try:
        return {str(key): np.asarray(value, dtype=np.float64) for key, value in raw.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter file {path} holds something other than numbers: {exc}") from exc


def load_reference(path: Path) -> np.ndarray:
    """Reference rows as a 2-D float64 array (a 1-D file is one feature)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                if "reference" in names:
                    data = archive["reference"]
                elif len(names) == 1:
                    data = archive[names[0]]
                else:
                    raise ValueError(f"it holds {names}; name the reference array 'reference'")
        elif suffix == ".csv":
            try:
                data = np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError:
                data = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        else:
            raise ValueError("expected a .npy, .npz or .csv file")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read reference data from {path}: {exc}") from exc
    array = np.asarray(data, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"reference data in {path} must be rows x features with at least 2 rows, got shape {list(array.shape)}")
    return array
