"""Tracing a backbone into a chain of blocks (the only package that knows torch.fx internals)."""

from mtgraph.frontend.backbone import Backbone, BlockInfo, members_of, primary, trace
from mtgraph.frontend.residual import Shortcut

__all__ = ["Backbone", "BlockInfo", "Shortcut", "trace", "members_of", "primary"]
