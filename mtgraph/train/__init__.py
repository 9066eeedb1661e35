"""mtgraph.train."""
