"""Models of library helpers that run training moves (timm's ``NativeScaler``): small Python
files, written by this project from the libraries' documented behaviour, that the analysis
follows as if they were linted files. They are parsed, never imported, and never reported
on: a finding they expose lies at the user's call."""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))

# a library's qualified name -> (model file, the name it has there)
_MODELS = {
    "timm.utils.NativeScaler": ("timm_utils.py", "NativeScaler"),
    "timm.utils.cuda.NativeScaler": ("timm_utils.py", "NativeScaler"),
    "timm.utils.ApexScaler": ("timm_utils.py", "ApexScaler"),
    "timm.utils.cuda.ApexScaler": ("timm_utils.py", "ApexScaler"),
}


def locate(qualname: str) -> tuple[str, str] | None:
    """The model file (a path) and name of a library helper the analysis knows, if any."""
    found = _MODELS.get(qualname)
    return (os.path.join(_HERE, found[0]), found[1]) if found is not None else None


def is_model(path: str) -> bool:
    """Whether a path is one of these model files (a finding there moves to the caller)."""
    return os.path.dirname(os.path.abspath(path)) == _HERE
