"""Typed, one-line errors for DXfile datasets.

Each problem a beamline file can have gets its own class so callers (the CLI,
the queue, the IOC's ``Message`` PV) can both show the message and branch on
the kind without parsing text.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """Base class: the dataset cannot be used as it is."""

    kind = "dataset"


class NotAFileError(DatasetError):
    """The path does not exist or is not a regular file."""

    kind = "not-a-file"


class UnreadableError(DatasetError):
    """The file exists but cannot be read (permissions, I/O error)."""

    kind = "unreadable"


class NotHDF5Error(DatasetError):
    """The file is not HDF5 at all."""

    kind = "not-hdf5"


class TruncatedFileError(DatasetError):
    """The file starts like HDF5 but is cut short or corrupt."""

    kind = "truncated"


class MissingDatasetError(DatasetError):
    """A required ``/exchange/...`` dataset is absent."""

    kind = "missing-dataset"


class ShapeError(DatasetError):
    """Wrong rank, or data/flats/darks/theta do not fit together."""

    kind = "shape"


class EmptyDataError(DatasetError):
    """A dataset has a zero-length dimension."""

    kind = "empty"


class NonFiniteError(DatasetError):
    """NaN or Inf in the rows that are used."""

    kind = "non-finite"


class FlatFieldError(DatasetError):
    """The flat field is not brighter than the dark field: nothing to normalise by."""

    kind = "flat-field"


class ReconError(RuntimeError):
    """A reconstruction ran (or was looked for) but its outputs are not what they should be."""
