"""The oracle cacher: reads the training stream, plans caching over a lookahead window (Bagpipe) and
streams each trainer gateway its slices and plans."""
