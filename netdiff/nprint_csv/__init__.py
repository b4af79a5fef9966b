"""nPrint's CSV format: ``writer`` turns captures into it byte-identically to the nPrint tool,
``reader`` reads it back and rebuilds the packets."""
