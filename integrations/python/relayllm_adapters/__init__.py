"""Adapters that let RL frameworks (verl, TRL) drive relayllm's relay.

The frameworks train the SLM; a running ``relayllm serve`` does the rollouts through
``/relay/generate`` (the SLM and the LLM decoding together) and scores groups with
``/reward/group`` (the difficulty-aware reward). Only the standard library is needed here;
the frameworks themselves are imported lazily, when present.
"""

from .client import RelayClient, RelayError, parse_calls

__all__ = ["RelayClient", "RelayError", "parse_calls"]
