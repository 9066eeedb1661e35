"""The ``affinity`` strategy: branched multi-task networks (papers/001, BMTN).

BMTN trains one single-task network per task, measures task affinity with
RSA at D candidate branch locations (``mtgraph.analysis.similarity``), and
picks the tree of nested task partitions with the smallest summed clustering
cost that fits a parameter or GMac budget. The tree is then materialised with
``split`` passes on the all-shared graph and trained jointly.

:mod:`mtgraph.strategies.affinity.tree_search` holds the pure combinatorial
part (tree value, clustering cost, enumeration, budgeted search, budget path);
it knows nothing about graphs or training.
"""
