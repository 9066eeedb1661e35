"""mtgraph.data."""
