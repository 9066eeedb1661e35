"""mtgraph.analysis."""
