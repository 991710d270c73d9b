"""Model files: the reader/writer of every checkpoint format, the registry of named weights, the one loader."""
