"""The packaged attribute prompt library and the reader of user report findings."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import yaml

from pathgen_dagster.lib.selection.prompts_library import GENERIC, PromptLibrary, load_report_findings

REQUIRED_SITES = (
    *("LUAD", "LUSC", "BRCA", "COADREAD", "PRAD", "KIRC", "SKCM"),
    *("LIHC", "THCA", "GBM", "STAD", "BLCA", "HNSC", GENERIC),
)
PACKAGED = resources.files("pathgen_dagster.lib.selection").joinpath("data", "attribute_prompts.yaml")


@pytest.fixture(scope="module")
def library() -> PromptLibrary:
    return PromptLibrary.load()


def test_packaged_library_covers_the_common_tcga_sites(library: PromptLibrary) -> None:
    assert set(REQUIRED_SITES) <= set(library.sites)
    for site in library.sites.values():
        assert 15 <= len(site.prompts) <= 25, site.code
        assert site.name and site.aliases
        # Short statements: CLIP reads at most 77 tokens, and one feature per line.
        assert all(len(prompt.split()) <= 20 for prompt in site.prompts), site.code


def test_version_is_the_file_hash(library: PromptLibrary) -> None:
    assert library.version == hashlib.sha256(PACKAGED.read_bytes()).hexdigest()[:12]
    assert len(library.version) == 12 and int(library.version, 16) >= 0


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("lung", "LUAD"),
        ("luad", "LUAD"),
        ("TCGA-LUSC", "LUSC"),
        ("Lung_Adenocarcinoma", "LUAD"),
        ("colon", "COADREAD"),
        ("READ", "COADREAD"),
        ("tcga-coad", "COADREAD"),
        ("  Head and Neck ", "HNSC"),
        ("kidney", "KIRC"),
        ("melanoma", "SKCM"),
        ("Breast invasive carcinoma", "BRCA"),
        ("pancreas", GENERIC),
        (None, GENERIC),
    ],
)
def test_sites_resolve_through_aliases(library: PromptLibrary, name: str | None, code: str) -> None:
    assert library.resolve(name).code == code
    assert library.prompts_for(name) == list(library.sites[code].prompts)


def test_custom_library_and_its_version(tmp_path: Path) -> None:
    document = {"sites": [{"code": GENERIC, "name": "Any", "prompts": ["Nuclei."]}]}
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(document))
    first = PromptLibrary.load(path)
    assert first.prompts_for("lung") == ["Nuclei."]
    document["sites"][0]["prompts"].append("Fat.")
    path.write_text(yaml.safe_dump(document))
    assert PromptLibrary.load(path).version != first.version


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ([{"code": "LUAD", "name": "Lung", "prompts": ["x"]}], "no 'generic' site"),
        ([{"code": GENERIC, "name": "Any", "prompts": []}], "'prompts' must be a non-empty"),
        ([{"code": GENERIC, "name": "Any", "prompts": ["x", "x"]}], "same statement twice"),
        ([{"code": GENERIC, "prompts": ["x"]}], "needs a non-empty 'code' and 'name'"),
        (
            [
                {"code": GENERIC, "name": "Any", "aliases": ["lung"], "prompts": ["x"]},
                {"code": "LUAD", "name": "Adeno", "aliases": ["lung"], "prompts": ["y"]},
            ],
            "alias 'lung' names both generic and LUAD",
        ),
    ],
)
def test_malformed_library_names_file_and_fault(tmp_path: Path, sites: list, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sites": sites}))
    with pytest.raises(ValueError, match=message) as raised:
        PromptLibrary.load(path)
    assert str(path) in str(raised.value)


def test_library_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sites: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        PromptLibrary.load(path)


FINDINGS = [
    {"slide_id": "001", "finding": "Lepidic growth along alveolar walls."},
    {"slide_id": "001", "finding": "Micropapillary tufts."},
    {"slide_id": "001", "finding": "Lepidic growth along alveolar walls."},
    {"slide_id": "TCGA-XX", "finding": "Keratin pearls.", "page": "2"},
]
EXPECTED = {
    "001": ["Lepidic growth along alveolar walls.", "Micropapillary tufts."],
    "TCGA-XX": ["Keratin pearls."],
}


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_report_findings_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"findings{suffix}"
    frame = pl.DataFrame(FINDINGS)
    if suffix == ".csv":
        frame.write_csv(path)
    elif suffix == ".json":
        path.write_text(json.dumps(FINDINGS))
    elif suffix == ".jsonl":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)
    assert load_report_findings(path) == EXPECTED


def test_absent_report_file_means_no_findings(tmp_path: Path) -> None:
    assert load_report_findings(None) == {}
    assert load_report_findings(tmp_path / "missing.csv") == {}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("f.csv", "slide,text\na,b\n", r"missing column\(s\) \['slide_id', 'finding'\]"),
        ("f.csv", "slide_id,finding\na,b\nc,\n", "row 2 has an empty slide_id or finding"),
        ("f.json", '{"slide_id": ', "cannot be read"),
        ("f.json", '[{"slide_id": "a", "finding": ["x"]}]', "must be text"),
        ("f.parquet", "not parquet", "cannot be read"),
        ("f.xlsx", "", "unsupported suffix '.xlsx'"),
    ],
)
def test_malformed_report_file_is_explained(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        load_report_findings(path)
    assert str(path) in str(raised.value)
