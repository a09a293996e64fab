"""The floor of the package: file-system plumbing every layer may use (atomic writes, progress bars, the fault
injection seam of the kill tests). It imports nothing else of the package, and no torch."""
