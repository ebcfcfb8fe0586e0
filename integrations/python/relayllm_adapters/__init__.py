"""Adapters that let RL frameworks (verl, TRL) drive relayllm's relay.

The frameworks train the SLM; a running ``relayllm serve`` does the rollouts through
``/relay/generate`` (the SLM and the LLM decoding together) and scores groups with
``/reward/group`` (the difficulty-aware reward). Only the standard library is needed here;
the frameworks themselves are imported lazily, when present. ``sync_weights`` pushes the
trainer's current SLM weights to the server before each rollout batch, so the rollouts come
from the policy being trained.
"""

from .client import RelayClient, RelayError, parse_calls, sync_weights

__all__ = ["RelayClient", "RelayError", "parse_calls", "sync_weights"]
