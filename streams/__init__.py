"""recstream.streams: the Faust worker and everything on the serving path (no torch)."""
