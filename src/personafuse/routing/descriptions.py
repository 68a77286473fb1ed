"""Short natural-language descriptions of what each pole calls for in a situation.

Used to initialise the pole prototypes: before any training, a context's similarity to these descriptions is
the zero-shot router (and the zero-shot baseline that the trained router is scored against).
"""

from __future__ import annotations

POLE_DESCRIPTIONS: dict[str, str] = {
    "O+": "A situation that calls for curiosity, imagination, new ideas, creative brainstorming and exploring unusual options.",
    "O-": "A situation that calls for a conventional, practical, proven, standard answer with no tangents.",
    "C+": "A situation that calls for precision, careful step-by-step instructions, thoroughness, planning and exact details.",
    "C-": "A situation that calls for a relaxed, spontaneous, casual, easy-going reply without procedures.",
    "E+": "A situation that calls for enthusiasm, excitement, celebration, energy and lively social chat.",
    "E-": "A situation that calls for a quiet, calm, low-key reply that gives the person space.",
    "A+": "A situation that calls for warmth, kindness, empathy, comfort and emotional support.",
    "A-": "A situation that calls for blunt, direct, honest criticism, firm negotiation or pushing back.",
    "N+": "A situation that calls for showing alarm, worry and urgency about a real danger.",
    "N-": "A situation that calls for staying calm, steady and reassuring under stress, anxiety or an emergency.",
}
