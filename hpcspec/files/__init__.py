"""Layer 1, files on disk: atomic writes and the ownership rules for output folders (what hpcspec may create, overwrite and delete)."""
