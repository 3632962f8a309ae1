"""The Zarr dataset store: labelled structures, models, checkpoints, trajectories."""

from services.store.store import Provenance, Record, Store, StoreWriter, StructureBatch, safe_name

__all__ = ["Provenance", "Record", "Store", "StructureBatch", "StoreWriter", "safe_name"]
