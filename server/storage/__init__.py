"""Durability: the journal and snapshots of each shard (SPEC §7)."""
