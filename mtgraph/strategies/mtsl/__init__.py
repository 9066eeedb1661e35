"""MTSL strategy (papers/000): CKA-aligned task nodes fused layer by layer.

``grouping`` holds Algorithm 2 (which task nodes to fuse); the strategy driver
that trains, aligns and calls the ``fuse`` pass is added separately.
"""
