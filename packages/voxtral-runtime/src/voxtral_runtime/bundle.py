"""A bundle directory (voxtral-export's output, docs/pte.md): finding its files and checking them against the
manifest the export wrote beside them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from voxtral_format.pte import MANIFEST_FILE, MODEL_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE


class ProgramError(ValueError):
    """A missing file, a .pte that is not ours, or programs that do not fit together."""


class BundlePaths(NamedTuple):
    """The three files a session needs; `resolve` finds them from a bundle directory and explicit paths."""

    model: Path
    preprocessor: Path
    tokenizer: Path

    @classmethod
    def resolve(cls, bundle: str | Path | None = None, model: str | Path | None = None,
                preprocessor: str | Path | None = None, tokenizer: str | Path | None = None) -> "BundlePaths":
        """Explicit paths win; missing ones are taken from the bundle directory (voxtral-export's output)."""
        base = Path(bundle) if bundle else None
        if base is not None and not base.is_dir():
            raise ProgramError(f"{base}: bundle directory not found (voxtral-export --output-dir writes one)")

        def pick(explicit, name: str, flag: str) -> Path:
            if explicit:
                path = Path(explicit)
            elif base is not None:
                path = base / name
            else:
                raise ProgramError(f"no {name}: pass {flag} or a bundle directory")
            if not path.is_file():
                raise ProgramError(f"{path}: file not found")
            return path

        return cls(model=pick(model, MODEL_FILE, "--model_path"),
                   preprocessor=pick(preprocessor, PREPROCESSOR_FILE, "--preprocessor_path"),
                   tokenizer=pick(tokenizer, TOKENIZER_FILE, "--tokenizer_path"))


def read_manifest(directory: Path) -> dict:
    """The bundle's manifest.json ({} when there is none: the files were passed from elsewhere)."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ProgramError(f"{manifest}: unreadable manifest ({e}); re-export the bundle") from e
    if not isinstance(data, dict):
        raise ProgramError(f"{manifest}: not a voxtral-export manifest; re-export the bundle")
    return data


def verify_files(paths: BundlePaths) -> None:
    """Checks each file that sits in a bundle directory against the sha256 its manifest recorded at export: a
    model.pte corrupted in the middle still loads, and transcribes garbage. Files passed from elsewhere, and bundles
    without hashes (exported before they were recorded), are not checked. About 1.5 s for a 2.5 GB model.pte."""
    for path in (paths.model, paths.preprocessor, paths.tokenizer):
        expected = read_manifest(path.parent).get("sha256", {}).get(path.name)
        if expected is None:
            continue
        with open(path, "rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != expected:
            raise ProgramError(f"{path} does not match its manifest (sha256 {actual[:12]}..., recorded "
                               f"{expected[:12]}...): the file is damaged or was replaced; copy or export it again")


def model_name(paths: BundlePaths) -> str:
    """The checkpoint's directory name (e.g. Voxtral-Mini-4B-Realtime-2602) from the manifest, else the bundle's."""
    try:
        source = read_manifest(paths.model.parent).get("source", "")
    except ProgramError:  # only a name: an unreadable manifest is verify_files' concern
        source = ""
    return Path(source).name if source else paths.model.parent.name
