"""mtgraph.strategies."""
