"""verl: an agent loop whose rollouts are relay runs, and a batch reward function with the
difficulty-aware reward.

agent_loop.yaml (``actor_rollout_ref.rollout.agent.agent_loop_config_path``)::

    - name: relay_agent
      _target_: relayllm_adapters.verl.RelayAgentLoop

Set ``RELAYLLM_URL`` (and ``RELAYLLM_API_KEY`` when the server has a key), give the dataset an
``agent_name: relay_agent`` column, and for the reward::

    reward_model.reward_manager=batch
    custom_reward_function.path=<this file>  custom_reward_function.name=compute_score_batch

verl documents ``AgentLoopOutput`` as: ``prompt_ids``, ``response_ids``, ``response_mask``
(1 = tokens the policy generated and is trained on, 0 = others: here the LLM's),
``response_logprobs``, ``reward_score``, ``num_turns``, ``metrics`` (``AgentLoopMetrics``:
``generate_sequences``, ``tool_calls``) and ``extra_fields``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from .client import RelayClient, parse_calls

try:  # verl present: subclass its base and return its types
    from verl.experimental.agent_loop.agent_loop import (  # type: ignore
        AgentLoopBase,
        AgentLoopMetrics,
        AgentLoopOutput,
    )
except ImportError:  # verl absent (tests, docs): stand-ins with the documented fields
    from dataclasses import dataclass, field

    class AgentLoopBase:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.config = kwargs.get("trainer_config")

    @dataclass
    class AgentLoopMetrics:  # type: ignore[no-redef]
        generate_sequences: float = 0.0
        tool_calls: float = 0.0

    @dataclass
    class AgentLoopOutput:  # type: ignore[no-redef]
        prompt_ids: list
        response_ids: list
        response_mask: list
        metrics: AgentLoopMetrics
        response_logprobs: Optional[list] = None
        multi_modal_data: Optional[dict] = None
        reward_score: Optional[float] = None
        num_turns: int = 0
        extra_fields: dict = field(default_factory=dict)


def _client() -> RelayClient:
    url = os.environ.get("RELAYLLM_URL")
    if not url:
        raise RuntimeError("set RELAYLLM_URL to the relayllm server (e.g. http://127.0.0.1:8080)")
    return RelayClient(url, os.environ.get("RELAYLLM_API_KEY"))


class RelayAgentLoop(AgentLoopBase):
    """One relay rollout per sample: the server's SLM writes and calls its LLM."""

    response_length: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = getattr(self, "config", None)
        try:
            self.response_length = int(cfg.actor_rollout_ref.rollout.response_length)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - no verl config: keep the default
            pass
        self.client = _client()

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        messages = list(kwargs["raw_prompt"])
        start = time.perf_counter()
        prompt_ids = self.client.tokenize(messages=messages)
        r = self.client.generate(
            prompt_ids,
            max_tokens=self.response_length,
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            relay=kwargs.get("relay"),
        )
        ids = list(r["ids"])[: self.response_length]
        mask = [1 - int(m) for m in r["source_mask"]][: len(ids)]
        logprobs = [float(lp) if lp is not None else 0.0 for lp in r["slm_logprobs"]][: len(ids)]
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=ids,
            response_mask=mask,
            response_logprobs=logprobs,
            num_turns=2,
            metrics=AgentLoopMetrics(generate_sequences=time.perf_counter() - start),
            extra_fields={
                "relay_calls": [
                    {"requested_n": c["requested_n"], "served": c["served"]} for c in r["calls"]
                ],
                "relay_llm_tokens": len(ids) - sum(mask),
            },
        )


def compute_score_batch(
    data_sources: list,
    solution_strs: list[str],
    ground_truths: list,
    extra_infos: list,
    reward: str = "difficulty",
    rho: str = "requested",
    **kwargs: Any,
) -> list[float]:
    """verl's ``batch`` reward manager hook. Rollouts of one prompt (same ``extra_info["index"]``,
    else the same ground truth and source) form a group. ρ counts the requested ``n`` of the
    commands in each response; response length is the response re-tokenized by the server."""
    client = _client()
    groups: dict[Any, list[int]] = {}
    for i in range(len(solution_strs)):
        info = extra_infos[i] if extra_infos and extra_infos[i] else {}
        key = info.get("index", (data_sources[i], str(ground_truths[i])))
        groups.setdefault(key, []).append(i)
    rewards = [0.0] * len(solution_strs)
    for members in groups.values():
        rollouts = []
        for i in members:
            text = solution_strs[i]
            calls = [{"requested_n": n, "served": n} for n in parse_calls(text)]
            rollouts.append(
                {
                    "correct": client.grade(str(ground_truths[i]), text),
                    "calls": calls,
                    "response_tokens": len(client.tokenize(prompt=text)),
                }
            )
        got = client.reward_group(rollouts, reward=reward, rho=rho)["rewards"]
        for i, r in zip(members, got):
            rewards[i] = float(r)
    return rewards
