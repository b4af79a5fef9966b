"""The protocol rule engine: applies protocol_rules/*.yaml (fields, legal values, lengths,
checksums) to decoded rows."""
