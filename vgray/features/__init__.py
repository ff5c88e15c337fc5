"""FEATURES coming in: the records, listing, probing and one reader per input format."""
