"""TRL: a ``rollout_func`` for ``GRPOTrainer`` that rolls out through the relay, and a reward
function that scores each group with the difficulty-aware reward.

    from relayllm_adapters.trl import make_rollout_func, make_reward_func
    trainer = GRPOTrainer(
        model=..., train_dataset=ds,            # ds has "prompt" and "answer" columns
        rollout_func=make_rollout_func("http://127.0.0.1:8080", max_tokens=1024),
        reward_funcs=make_reward_func("http://127.0.0.1:8080"),
        args=GRPOConfig(num_generations=8, ...),
    )

TRL's contract (``rollout_func(prompts, trainer) -> dict``): ``prompt_ids``,
``completion_ids`` and ``logprobs`` (one list per completion), optional ``env_mask``
(1 = tokens the policy wrote, 0 = external tokens kept out of the loss: here the LLM's), and
any extra keys, which TRL forwards to the reward functions.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .client import RelayClient


def _prompt_ids(client: RelayClient, prompt: Any) -> list[int]:
    if isinstance(prompt, list):  # conversational: a list of messages
        return client.tokenize(messages=prompt)
    return client.tokenize(messages=[{"role": "user", "content": str(prompt)}])


def make_rollout_func(
    base_url: str,
    max_tokens: int = 1024,
    temperature: float = 1.0,
    relay: Optional[dict[str, Any]] = None,
    api_key: Optional[str] = None,
) -> Callable[..., dict[str, list]]:
    client = RelayClient(base_url, api_key)

    def rollout_func(prompts: list, trainer: Any = None) -> dict[str, list]:
        out: dict[str, list] = {
            "prompt_ids": [],
            "completion_ids": [],
            "logprobs": [],
            "env_mask": [],
            "relay_calls": [],
            "relay_response_tokens": [],
        }
        for prompt in prompts:
            ids = _prompt_ids(client, prompt)
            r = client.generate(ids, max_tokens=max_tokens, temperature=temperature, relay=relay)
            out["prompt_ids"].append(ids)
            out["completion_ids"].append(list(r["ids"]))
            # The SLM's log-probs; LLM positions get 0.0 and are masked out by env_mask.
            out["logprobs"].append([float(lp) if lp is not None else 0.0 for lp in r["slm_logprobs"]])
            out["env_mask"].append([1 - int(m) for m in r["source_mask"]])
            out["relay_calls"].append(
                [{"requested_n": c["requested_n"], "served": c["served"]} for c in r["calls"]]
            )
            out["relay_response_tokens"].append(len(r["ids"]))
        return out

    return rollout_func


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def make_reward_func(
    base_url: str,
    reward: str = "difficulty",
    rho: str = "requested",
    answer_column: str = "answer",
    grade_mode: str = "mathruler",
    api_key: Optional[str] = None,
) -> Callable[..., list[float]]:
    """A TRL reward function. Completions of the same prompt form one group (TRL repeats each
    prompt ``num_generations`` times); each group's rewards come from ``/reward/group``."""
    client = RelayClient(base_url, api_key)

    def relay_reward(prompts, completions, relay_calls, relay_response_tokens, **kwargs) -> list[float]:
        answers = kwargs[answer_column]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(repr(p), []).append(i)
        rewards = [0.0] * len(completions)
        for members in groups.values():
            rollouts = [
                {
                    "correct": client.grade(str(answers[i]), _text(completions[i]), grade_mode),
                    "calls": relay_calls[i],
                    "response_tokens": int(relay_response_tokens[i]),
                }
                for i in members
            ]
            got = client.reward_group(rollouts, reward=reward, rho=rho)["rewards"]
            for i, r in zip(members, got):
                rewards[i] = float(r)
        return rewards

    relay_reward.__name__ = f"relay_{reward}_reward"
    return relay_reward
