"""The protocol rule engine: applies protocol_rules/*.yaml (fields, legal values, lengths,
checksums, dependencies, bindings) to decoded rows; ``compute.py`` registers every ``compute:``
name a file may use."""
