"""The OpenAI-compatible server: protocol (pydantic models), engine (batching over a PersonaFuse), app (FastAPI).

from personafuse.serve import HFEngine, ServeSettings, create_app
settings = ServeSettings(model="smollm2-135m-instruct")
app = create_app(HFEngine(pf, settings.served_name), settings)
"""

from personafuse.serve.app import APIError, create_app
from personafuse.serve.engine import Engine, EngineOverloaded, GenerationJob, HFEngine, SamplingParams
from personafuse.serve.presets import PRESETS, Preset, register_preset
from personafuse.serve.settings import ServeSettings

__all__ = [
    "PRESETS",
    "APIError",
    "Engine",
    "EngineOverloaded",
    "GenerationJob",
    "HFEngine",
    "Preset",
    "SamplingParams",
    "ServeSettings",
    "create_app",
    "register_preset",
]
