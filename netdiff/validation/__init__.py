"""Is every packet valid? tshark at every layer (``tshark``), tcpreplay in a namespace of
netdiff's own (``tcpreplay``), the protocol rules (``rule_checks``); ``pcaps.validate_pcaps`` runs
the three over capture files (``netdiff validate``)."""
