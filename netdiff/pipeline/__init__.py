"""The jobs a user runs end to end: pcap <-> image conversions (``conversions``), resumable
multi-stage pipelines (``stages``, ``netdiff batch``), the seeded sample captures of the embedded
default (``sample_captures``) and the demo that runs them through the round trip (``demo``)."""
