"""Safe MTL (papers/004): a public encoder, a private encoder per task, a learned gate per task.

The entry point is :class:`SMTLStrategy` (registered as ``"smtl"``):
``SMTLStrategy().learn(problem, config)``. ``config`` holds the options
(:class:`SMTLConfig`, variants ``smtl``, ``lite``, ``smtl_c``, ``lite_c``;
formulations ``single`` and ``bilevel``), ``build`` the gated graph
(``split`` + ``gate`` passes on the One-Net), ``decoder_gate`` the modules of
gates after the decoders, ``harden`` the export choice (public iff α > 0.5,
ties private; ``harden`` + ``dce``), ``architectures`` fixed gate settings to
retrain (random ones, and the learned ones), ``safety`` Δ_I and η̂ against
single-task networks, and ``strategy`` the driver, the reference networks
(:func:`train_reference`) and :func:`learn_smtl`, the older entry point kept
for one release.
"""

from mtgraph.strategies.smtl.architectures import fixed_gates, learned_architecture, random_architecture
from mtgraph.strategies.smtl.build import (
    PRIVATE,
    PUBLIC,
    SMTLNetwork,
    alphas,
    build_smtl,
    decoder_level,
    gate_alpha,
    gate_keys,
    gate_nodes,
    smtl_passes,
)
from mtgraph.strategies.smtl.config import DEFAULT_GATE_LR, FORMULATIONS, PRIVATE_INITS, VARIANTS, SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DecoderGate, DualHead, GatedPair
from mtgraph.strategies.smtl.entry import SMTLStrategy
from mtgraph.strategies.smtl.harden import (
    SIDES,
    TIE_TO_PRIVATE,
    HardenedSMTL,
    choices,
    choose,
    harden_passes,
    harden_smtl,
    lite_passes,
)
from mtgraph.strategies.smtl.safety import SafetyReport, safety
from mtgraph.strategies.smtl.strategy import (
    REFERENCES,
    AlphaTracker,
    learn_smtl,
    phase_name,
    split_for_gates,
    train_reference,
)

__all__ = [
    "SMTLStrategy",
    "SMTLConfig",
    "VARIANTS",
    "FORMULATIONS",
    "PRIVATE_INITS",
    "DEFAULT_GATE_LR",
    "SMTLNetwork",
    "build_smtl",
    "smtl_passes",
    "decoder_level",
    "gate_nodes",
    "gate_keys",
    "gate_alpha",
    "alphas",
    "PUBLIC",
    "PRIVATE",
    "DecoderGate",
    "DualHead",
    "GatedPair",
    "TIE_TO_PRIVATE",
    "SIDES",
    "HardenedSMTL",
    "choose",
    "choices",
    "harden_passes",
    "lite_passes",
    "harden_smtl",
    "fixed_gates",
    "random_architecture",
    "learned_architecture",
    "SafetyReport",
    "safety",
    "AlphaTracker",
    "split_for_gates",
    "phase_name",
    "train_reference",
    "learn_smtl",
    "REFERENCES",
]
