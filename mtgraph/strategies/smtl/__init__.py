"""Safe MTL (papers/004): a public encoder, a private encoder per task, a learned gate per task.

``config`` holds the options (:class:`SMTLConfig`, variants ``smtl``,
``lite``, ``smtl_c``, ``lite_c``), ``build`` the gated graph (``split`` +
``gate`` passes on the One-Net), ``decoder_gate`` the modules of gates after
the decoders, ``harden`` the export choice (public iff α > 0.5, ties private;
``harden`` + ``dce``), ``safety`` Δ_I and η̂ against single-task networks,
and ``strategy`` the driver :func:`learn_smtl` and the reference networks
(:func:`train_reference`).
"""

from mtgraph.strategies.smtl.build import (
    PRIVATE,
    PUBLIC,
    SMTLNetwork,
    alphas,
    build_smtl,
    gate_alpha,
    gate_nodes,
    smtl_passes,
)
from mtgraph.strategies.smtl.config import PRIVATE_INITS, VARIANTS, SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DecoderGate, DualHead, GatedPair
from mtgraph.strategies.smtl.harden import TIE_TO_PRIVATE, HardenedSMTL, choices, choose, harden_passes, harden_smtl
from mtgraph.strategies.smtl.safety import SafetyReport, safety
from mtgraph.strategies.smtl.strategy import REFERENCES, AlphaTracker, learn_smtl, train_reference

__all__ = [
    "SMTLConfig",
    "VARIANTS",
    "PRIVATE_INITS",
    "SMTLNetwork",
    "build_smtl",
    "smtl_passes",
    "gate_nodes",
    "gate_alpha",
    "alphas",
    "PUBLIC",
    "PRIVATE",
    "DecoderGate",
    "DualHead",
    "GatedPair",
    "TIE_TO_PRIVATE",
    "HardenedSMTL",
    "choose",
    "choices",
    "harden_passes",
    "harden_smtl",
    "SafetyReport",
    "safety",
    "AlphaTracker",
    "learn_smtl",
    "train_reference",
    "REFERENCES",
]
