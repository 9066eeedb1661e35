"""mtgraph.passes."""
