"""The deploy bundle: the only thing that crosses from the workstation to the device.

A folder with ``manifest.json`` and the files it lists (ONNX graphs, engines, the domain
classifier). Every file is listed with its sha256 and checked when the bundle is opened; a
bundle that fails the check is refused. numpy/json only: no torch on the device.

manifest.json (format_version 1)::

    {"format": "edge-calib-bundle", "format_version": 1, "created": ..., "edge_calib": ...,
     "classifier": {"files": {"onnxruntime": ..., "tensorrt": ...}, "fingerprint", "arch",
                    "input_spec", "labels", "precision", "sparsity", "params", ...},
     "domains": {NAME: {"calibrator": null | {"files": {...}, "fingerprint", "eps", "params",
                                              "trained_against", "source", "target", "metrics"},
                        "fused": null | {"onnxruntime": ..., "tensorrt": ...}}},
     "default_domain": NAME,
     "domain_classifier": null | {"file": ..., "holdout_accuracy": ...},
     "engines": {"tensorrt": {CACHE_KEY: {...}}},
     "files": {RELATIVE_PATH: SHA256}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeCalibError
from .fileio import file_digest, write_json_atomic
from .spec import InputSpec

FORMAT, FORMAT_VERSION = "edge-calib-bundle", 1
MANIFEST = "manifest.json"


@dataclass
class Bundle:
    root: Path
    manifest: dict

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.manifest["classifier"]["input_spec"])

    @property
    def domains(self) -> list[str]:
        return list(self.manifest["domains"])

    @property
    def labels(self) -> list[str]:
        return self.manifest["classifier"]["labels"]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def domain(self, name: str) -> dict:
        try:
            return self.manifest["domains"][name]
        except KeyError:
            raise EdgeCalibError(f"unknown domain {name!r}; this bundle has: "
                                 f"{', '.join(self.domains)}") from None

    def classifier_file(self, backend: str) -> Path:
        return self.path(self.manifest["classifier"]["files"][backend])

    def calibrator_file(self, domain: str, backend: str) -> Path | None:
        entry = self.domain(domain)["calibrator"]
        return None if entry is None else self.path(entry["files"][backend])

    def fused_file(self, domain: str, backend: str) -> Path | None:
        fused = self.domain(domain)["fused"]
        return None if fused is None else self.path(fused[backend])

    def verify(self) -> None:
        """Every listed file exists and matches its sha256."""
        for relative, digest in self.manifest["files"].items():
            path = self.root / relative
            if not path.is_file():
                raise EdgeCalibError(f"bundle {self.root}: {relative} is missing")
            if file_digest(path) != digest:
                raise EdgeCalibError(f"bundle {self.root}: {relative} does not match its sha256 "
                                     "in manifest.json (modified or corrupt)")


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise EdgeCalibError(f"{root} is not a deploy bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{manifest_path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise EdgeCalibError(f"{manifest_path}: not an edge-calib bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EdgeCalibError(f"{manifest_path}: format version {manifest.get('format_version')} "
                             f"is not supported (this edge-calib reads {FORMAT_VERSION})")
    for key in ("classifier", "domains", "files"):
        if key not in manifest:
            raise EdgeCalibError(f"{manifest_path}: missing {key!r}")
    bundle = Bundle(root, manifest)
    if verify:
        bundle.verify()
    return bundle


def record_files(root: Path, manifest: dict) -> dict:
    """Hash every file under ``root`` (but the manifest) into ``manifest["files"]``."""
    manifest["files"] = {str(p.relative_to(root)): file_digest(p)
                         for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    write_json_atomic(root / MANIFEST, record_files(root, manifest))
