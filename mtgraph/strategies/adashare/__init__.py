"""AdaShare strategy (papers/002): per-task select-or-skip policies per block.

* :mod:`.entry` — :class:`AdaShareStrategy`, the front door
  (``registry()["adashare"]``): ``learn``, ``config_for``, ``sample_random``
  (random policies at a GMac), ``architecture``;
* :mod:`.config` — :class:`AdaShareConfig`;
* :mod:`.policy` — the policy maths (Gumbel-softmax mixing, sparsity and
  sharing losses, curriculum, temperature, hardening, policy correlation);
* :mod:`.soft_graph` — the relaxed network on the IR: one Gumbel gate per
  (task, skippable block) over the One-Net weights;
* :mod:`.routing` — the hard (straight-through) mode: tasks whose sampled
  paths agree compute them once;
* :mod:`.search` — warm-up and the alternating policy search;
* :mod:`.derive` — a decision matrix to the hardened graph (``skip`` passes,
  ``cse``, ``dce``), the Random #1 / #2 policies, figures;
* :mod:`.sampling` — the GMac of a policy, random policies at a GMac;
* :mod:`.retrain` and :mod:`.evaluation` — the second stage, and hard
  evaluation with per-call-site BatchNorm statistics (:mod:`.sites`);
* :mod:`.evidence` — Hamming distances between the tasks' policies;
* :mod:`.strategy` — :func:`run_adashare` end to end, and the previous
  release's :func:`learn_adashare` / :func:`retrain_policy` (kept for one release).
"""

from mtgraph.strategies.adashare.config import AdaShareConfig
from mtgraph.strategies.adashare.derive import (
    check_decisions,
    harden_policy,
    policy_decisions,
    policy_figures,
    policy_pipeline,
    random_policy,
)
from mtgraph.strategies.adashare.entry import AdaShareStrategy
from mtgraph.strategies.adashare.evaluation import adashare_module, evaluate_hard, relative_score
from mtgraph.strategies.adashare.evidence import (
    RelatednessEvidence,
    RelatednessGap,
    hamming_matrix,
    relatedness_gap,
    relatedness_over_seeds,
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
    undecided_gates,
)
from mtgraph.strategies.adashare.retrain import Retrained, retrain_decisions
from mtgraph.strategies.adashare.routing import PolicyGate, SampledPathSharing, SharedCall, share_repeated_calls
from mtgraph.strategies.adashare.sampling import PolicyCosts, random_policy_at_gmac
from mtgraph.strategies.adashare.search import PolicySearch, SearchOutcome, UndecidedPolicyWarning, search_policy
from mtgraph.strategies.adashare.sites import recalibrate, shared_bn_sites
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
from mtgraph.strategies.adashare.strategy import learn_adashare, retrain_policy, run_adashare, run_fixed_policy

__all__ = [
    # front door
    "AdaShareStrategy",
    "AdaShareConfig",
    "run_adashare",
    "run_fixed_policy",
    # the search
    "search_policy",
    "SearchOutcome",
    "PolicySearch",
    "UndecidedPolicyWarning",
    # the second stage and hard evaluation
    "retrain_decisions",
    "Retrained",
    "evaluate_hard",
    "adashare_module",
    "relative_score",
    # previous release (kept for one release)
    "learn_adashare",
    "retrain_policy",
    # soft graph
    "gated_blocks",
    "soft_graph",
    "make_gates",
    "gate_key",
    "block_key",
    "policy_logits",
    "set_logits",
    "set_temperature",
    # hard mode
    "PolicyGate",
    "SharedCall",
    "share_repeated_calls",
    "SampledPathSharing",
    # derive, cost, random policies
    "harden_policy",
    "policy_pipeline",
    "policy_decisions",
    "random_policy",
    "policy_figures",
    "check_decisions",
    "PolicyCosts",
    "random_policy_at_gmac",
    # evidence
    "hamming_matrix",
    "relatedness_gap",
    "RelatednessGap",
    "relatedness_over_seeds",
    "RelatednessEvidence",
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
    "undecided_gates",
]
