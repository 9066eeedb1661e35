"""mtgraph.exporters."""
