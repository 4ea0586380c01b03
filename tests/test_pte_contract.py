"""The .pte contract (voxtral_format.pte) is declared once: export writes it, the runtime reads it through it, and
docs/pte.md describes exactly its keys. A program that breaks it is refused at load with the key named."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voxtral_format import pte
from voxtral_format.pte import MetadataError, ModelMetadata, PreprocessorMetadata

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_SRC = ROOT / "packages" / "voxtral-runtime" / "src" / "voxtral_runtime"


def model_constants(**changes) -> dict:
    values = {f.name: _example(f.name, f.type) for f in dataclasses.fields(ModelMetadata)}
    values.update(pte_format=pte.FORMAT, pte_format_version=pte.FORMAT_VERSION, program="model")
    values.update(changes)
    return values


def _example(name: str, kind: str) -> object:
    return {"int": 3, "float": 1.5, "bool": True, "str": name}[kind]


def metadata_table() -> dict[str, tuple[str, str]]:
    """docs/pte.md's metadata table: {key: (type, program)}."""
    doc = (ROOT / "docs" / "pte.md").read_text()
    section = doc[doc.index("## Constant methods"):]
    section = section[: section.index("\n## ", 1)]
    return {key: (kind, where) for key, kind, where in re.findall(r"^\| `(\w+)` \| (\w+) \| (\w+) \|", section, re.M)}


def test_pte_md_documents_exactly_the_metadata_keys():
    declared = {}
    for kind, program in ((PreprocessorMetadata, "both"), (ModelMetadata, "model")):
        for f in dataclasses.fields(kind):
            declared.setdefault(f.name, (f.type, program))
    assert metadata_table() == declared


def test_every_metadata_key_the_runtime_reads_is_in_the_contract():
    known = {f.name for f in dataclasses.fields(ModelMetadata)} | {
        name for name, value in vars(ModelMetadata).items() if isinstance(value, property)}
    read = set()
    for path in RUNTIME_SRC.glob("*.py"):
        read |= set(re.findall(r"\bmeta\.(\w+)", path.read_text()))
    assert read, "the runtime reads metadata as attributes of ModelMetadata"
    assert read - known == set()


def test_a_complete_program_reads_back_as_it_was_written():
    values = model_constants()
    meta = ModelMetadata.from_constants(values)
    assert meta.constants() == values
    assert meta.prompt_ids == [3] + [3] * 6


def test_a_missing_key_is_named():
    values = model_constants()
    del values["eos_id"]
    with pytest.raises(MetadataError, match="'eos_id' is missing .*re-export"):
        ModelMetadata.from_constants(values)


@pytest.mark.parametrize("key, value, expected", [
    ("eos_id", "2", "int"), ("eos_id", True, "int"), ("streaming", 1, "bool"), ("backend", 3, "str"),
    ("log_mel_floor", "low", "float"),
])
def test_a_value_of_the_wrong_type_is_named(key, value, expected):
    with pytest.raises(MetadataError, match=f"'{key}' is .*expected a {expected}"):
        ModelMetadata.from_constants(model_constants(**{key: value}))


def test_an_int_stands_for_a_float():
    assert ModelMetadata.from_constants(model_constants(log_mel_floor=-6)).log_mel_floor == -6.0


def test_foreign_and_unreadable_programs_are_refused():
    with pytest.raises(MetadataError, match="not a Voxtral Realtime program"):
        ModelMetadata.from_constants(model_constants(pte_format="llama"))
    with pytest.raises(MetadataError, match="format version 1 is not supported"):
        ModelMetadata.from_constants(model_constants(pte_format_version=1))
    with pytest.raises(MetadataError, match="this is the preprocessor program, not model.pte"):
        ModelMetadata.from_constants(model_constants(program="preprocessor"))


def test_keys_added_by_a_later_version_have_defaults_for_older_programs():
    values = model_constants(pte_format_version=3)
    del values["runtime_operators"]  # version 4 added it
    del values["kv_cache_dtype"]  # version 5 added it
    meta = ModelMetadata.from_constants(values)
    assert meta.runtime_operators == "" and meta.kv_cache_dtype == ""
    del values["shared_state"], values["state_buffers"]  # added without a new version: older programs lack them
    meta = ModelMetadata.from_constants(values)
    assert not meta.shared_state and meta.state_buffers == ""


def test_the_contract_needs_no_torch():
    code = "import sys, voxtral_format.pte, voxtral_format.tekken; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
