"""streams: the Faust worker around the pure core. Thin: decode, call the core, route effects."""
