"""The synthesis pipeline: situations -> annotation -> ten pole replies -> ideal and rejected, against any
OpenAI-compatible endpoint, resumable stage by stage. See docs/synthesis.md.
"""

from personafuse.data.synthesis.client import ChatClient, RequestFailed, ServerUnreachable
from personafuse.data.synthesis.config import SynthesisConfig
from personafuse.data.synthesis.pipeline import STAGE_NAMES, SynthesisPipeline, SynthesisSummary, synthesize

__all__ = [
    "STAGE_NAMES",
    "ChatClient",
    "RequestFailed",
    "ServerUnreachable",
    "SynthesisConfig",
    "SynthesisPipeline",
    "SynthesisSummary",
    "synthesize",
]
