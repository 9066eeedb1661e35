"""AdaShare strategy (papers/002): per-task select-or-skip policies per block.

``policy`` holds the policy maths (Gumbel-softmax mixing, sparsity and sharing
losses, curriculum, temperature, hardening, policy correlation); the strategy
driver that trains and calls the ``gate``/``skip`` passes is added separately.
"""
