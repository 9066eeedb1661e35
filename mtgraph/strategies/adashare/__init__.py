"""AdaShare strategy (papers/002): per-task select-or-skip policies per block.

* :mod:`.policy` — the policy maths (Gumbel-softmax mixing, sparsity and
  sharing losses, curriculum, temperature, hardening, policy correlation);
* :mod:`.soft_graph` — the relaxed network on the IR: one Gumbel
  :class:`~mtgraph.MixGate` per (task, skippable block) over the One-Net weights;
* :mod:`.derive` — a decision matrix to the hardened graph (``skip`` passes,
  ``cse``, ``dce``), random policies, figure data;
* :mod:`.sites` — BatchNorm statistics per call site;
* :mod:`.strategy` — :func:`learn_adashare` (warm-up, alternating search
  with curriculum, derive, retrain) and :func:`retrain_policy`.
"""

from mtgraph.strategies.adashare.derive import (
    check_decisions,
    harden_policy,
    policy_decisions,
    policy_figures,
    random_policy,
)
from mtgraph.strategies.adashare.policy import (
    EXECUTE,
    SKIP,
    curriculum_mask,
    derive_policy,
    execute_probability,
    gumbel_softmax_mix,
    policy_correlation,
    policy_regularization,
    sharing_loss,
    sparsity_loss,
    temperature,
)
from mtgraph.strategies.adashare.sites import (
    recalibrate,
    shared_bn_sites,
)
from mtgraph.strategies.adashare.soft_graph import (
    block_key,
    gate_key,
    gated_blocks,
    make_gates,
    policy_logits,
    set_logits,
    set_temperature,
    soft_graph,
)
from mtgraph.strategies.adashare.strategy import (
    AdaShareConfig,
    adashare_module,
    evaluate_hard,
    learn_adashare,
    retrain_policy,
)

__all__ = [
    # strategy
    "AdaShareConfig",
    "learn_adashare",
    "retrain_policy",
    "adashare_module",
    "evaluate_hard",
    # soft graph
    "gated_blocks",
    "soft_graph",
    "make_gates",
    "gate_key",
    "block_key",
    "policy_logits",
    "set_logits",
    "set_temperature",
    # derive
    "harden_policy",
    "policy_decisions",
    "random_policy",
    "policy_figures",
    "check_decisions",
    # BatchNorm per call site
    "recalibrate",
    "shared_bn_sites",
    # policy maths
    "EXECUTE",
    "SKIP",
    "curriculum_mask",
    "derive_policy",
    "execute_probability",
    "gumbel_softmax_mix",
    "policy_correlation",
    "policy_regularization",
    "sharing_loss",
    "sparsity_loss",
    "temperature",
]
