"""mtgraph.tasks."""
