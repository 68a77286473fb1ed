"""Data: record schema, JSONL io, validation, synthesis pipeline and dataset loaders."""

from personafuse.data.schema import DOMAINS, SCHEMA_VERSION, SituationRecord

__all__ = ["DOMAINS", "SCHEMA_VERSION", "SituationRecord"]
