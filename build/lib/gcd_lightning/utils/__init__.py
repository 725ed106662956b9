"""Small helpers shared by the pipeline: atomic files and content hashes."""
