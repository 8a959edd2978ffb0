"""The ModelStore: one canonical, versioned copy of bases and adapters.

Public API (see docs/modelstore.md)::

    from loraplane.modelstore import ModelStore, Manifest, VerifyReport, StoreError, verify_dir, load_manifest
"""

from .check import CheckReport, check_model_store
from .errors import StoreError
from .manifest import AdapterInfo, FileEntry, Manifest, TokenizerInfo, VariantInfo, load_manifest, manifest_json_schema
from .store import ROOT_ENV, ListedVersion, ModelStore, StoredVersion
from .verify import VerifyReport, verify_dir

__all__ = [
    "ModelStore", "StoredVersion", "ListedVersion", "Manifest", "FileEntry", "VariantInfo", "TokenizerInfo",
    "AdapterInfo", "VerifyReport", "CheckReport", "StoreError", "verify_dir", "load_manifest",
    "check_model_store", "manifest_json_schema", "ROOT_ENV",
]
