"""tools/sim: a deterministic virtual-time simulator of the overlay (issue 14); see README.md."""
