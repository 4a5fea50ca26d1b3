"""The schema of `params.yaml`'s `ingest` section (each source's settings) and the base of every section.

Part of the schema (`cxrstudy.params` validates the whole file and re-exports these); like it, this module imports
nothing of the project but `errors`.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A section of params.yaml: no unknown key, frozen, and values of exactly the declared type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PhantomParams(Section):
    """`ingest.phantom`: the embedded, NIH-shaped synthetic sample (site A)."""

    n_images: Annotated[int, Field(ge=20, le=5000)]
    image_size: Annotated[int, Field(ge=64, le=1024)]
    seed: int
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    # A planted subgroup gap: the finding signatures of AP views drawn at this fraction of their contrast (PA views
    # unchanged). 1 plants nothing; the report must then claim no gap beyond noise.
    ap_signature_contrast: Annotated[float, Field(gt=0.0, le=1.0)]


Uncertain = Literal["zeros", "ones", "ignore"]


class ChexpertPhantomParams(Section):
    """`ingest.chexpert_phantom`: the embedded, CheXpert-shaped synthetic sample (site B): real CheXpert label rows,
    the same findings' signatures as site A, acquired differently (another exposure, noise and detector size, more AP
    views, a burned-in corner marker)."""

    n_images: Annotated[int, Field(ge=20, le=5000)]
    image_size: Annotated[int, Field(ge=64, le=1024)]
    seed: int
    # Of patients, in the official test list; 1 = every image (the default: site B is an external test site).
    test_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    uncertain: Uncertain  # what an uncertain (-1) label becomes: zeros | ones | ignore (masked out of loss and metrics)
    views: Literal["frontal", "all"]


class ChexpertParams(Section):
    """`ingest.chexpert`: a local copy of CheXpert-v1.0-small (train.csv, valid.csv and the JPEGs)."""

    local_path: str | None  # the folder holding train.csv, valid.csv, train/ and valid/
    uncertain: Uncertain
    views: Literal["frontal", "all"]
    # Archives packed (once) from the extracted JPEGs; never inside data/. Relative paths are from the project root.
    download_dir: str
    workers: Annotated[int, Field(ge=0, le=256)]  # archives packed at once; 0 = one per CPU core


def no_credentials(value: str | None, what: str) -> str | None:
    # '@' checked before any parsing: urlsplit's own error quotes a password with brackets
    if value is not None and "@" in value:
        raise ValueError(f"{what} must not embed credentials (user:password@): params.yaml is committed to git and "
                         "the address appears in log messages")
    try:
        _ = value and urlsplit(value if "://" in value else f"//{value}").port  # a bad host or port: ValueError
    except ValueError:
        raise ValueError(f"{what} is not a valid address (scheme://host[:port]/path)") from None
    return value


class NihParams(Section):
    """`ingest.nih`: the real release, downloaded or linked (`cxrstudy.data.nih`)."""

    # Where the 12 archives are downloaded from. At NIH's address they have Box's names; anywhere else (a mirror)
    # they are fetched as images_001.tar.gz ... images_012.tar.gz unless url_style says otherwise.
    base_url: str
    url_style: Literal["auto", "nih-box", "plain"]
    # Where the metadata files are fetched by name; null: base_url for a mirror. NIH's Box gives them no fixed
    # address: put them in download_dir (or local_path) yourself.
    metadata_url: str | None
    # A folder holding the archives, or the extracted images (images/*.png) plus the metadata files.
    local_path: str | None
    # md5sum-format list (`<md5>  <file name>` a line) replacing NIH's published checksums, for a mirror or a
    # re-packed copy: its images_NNN.tar.gz names are the archives expected. null: NIH's 12 archives.
    md5_file: str | None
    # Downloads, verification records and archives packed from an extracted copy; never inside data/raw. Relative
    # paths are from the project root.
    download_dir: str
    link: Literal["auto", "hardlink", "symlink", "copy"]  # how data/raw/archives refers to the real archives
    metadata: Literal["v2020", "2017"]
    timeout_s: Annotated[float, Field(gt=0)]
    retries: Annotated[int, Field(ge=0, le=20)]
    backoff_s: Annotated[float, Field(ge=0, le=600)]  # wait before retry n: backoff_s * 2**n
    workers: Annotated[int, Field(ge=0, le=256)]  # archives MD5-checked or packed at once; 0 = one per CPU core

    @field_validator("base_url", "metadata_url")
    @classmethod
    def _urls_without_credentials(cls, value: str | None) -> str | None:
        if value is not None and ("?" in value or "#" in value):
            raise ValueError("the address must not carry a query (?...) or a fragment (#...): files are fetched as "
                             "<address>/<file name>")
        return no_credentials(value, "the address")


Source = Literal["phantom", "chexpert_phantom", "nih", "chexpert"]


class IngestParams(Section):
    source: Source  # the training site (data/raw)
    external: Literal["none", "phantom", "chexpert_phantom", "nih", "chexpert"]  # the external test site
    phantom: PhantomParams
    chexpert_phantom: ChexpertPhantomParams
    nih: NihParams
    chexpert: ChexpertParams

    @model_validator(mode="after")
    def _external_is_another_site(self) -> IngestParams:
        if self.external == self.source:
            raise ValueError(f"external ({self.external}) must be another source than the training site (source), "
                             "or none")
        return self
