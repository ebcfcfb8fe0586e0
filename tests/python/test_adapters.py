"""The verl and TRL adapters against a running relayllm server, without the frameworks
installed: what they return has exactly the fields and shapes the frameworks document.

    python3 tests/python/test_adapters.py http://127.0.0.1:PORT [API_KEY]
"""

import asyncio
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "integrations", "python"))

from relayllm_adapters import RelayClient, parse_calls  # noqa: E402
from relayllm_adapters.trl import make_reward_func, make_rollout_func  # noqa: E402

URL = sys.argv[1]
KEY = sys.argv[2] if len(sys.argv) > 2 else None
os.environ["RELAYLLM_URL"] = URL
if KEY:
    os.environ["RELAYLLM_API_KEY"] = KEY
from relayllm_adapters.verl import RelayAgentLoop, compute_score_batch  # noqa: E402

# The tiny SLM is unsure of everything: calls happen at once.
RELAY = {"policy": "confidence", "threshold": 0.99, "max_calls": 2, "max_call_tokens": 3}


def is_ids(xs):
    return isinstance(xs, list) and all(isinstance(x, int) and x >= 0 for x in xs)


def test_client():
    c = RelayClient(URL, KEY)
    ids = c.tokenize(messages=[{"role": "user", "content": "2+2?"}])
    assert is_ids(ids) and len(ids) > 3, ids
    assert c.tokenize(prompt="2+2?") != ids, "a chat prompt carries the template"
    assert c.grade("5", "so \\boxed{5}") and not c.grade("5", "\\boxed{6}")
    assert parse_calls("a<call>4</call>b<call> 12 </call><call>x</call>") == [4, 12]
    r = c.reward_group(
        [
            {"correct": True, "calls": [], "response_tokens": 10},
            {"correct": True, "calls": [{"requested_n": 5, "served": 5}], "response_tokens": 10},
        ]
    )
    assert r == {"scenario": "student-solvable", "rewards": [1.5, 0.5]}, r


def test_trl():
    rollout = make_rollout_func(URL, max_tokens=10, temperature=0.8, relay=RELAY, api_key=KEY)
    prompts = ["What is 2+2?", "What is 2+2?", [{"role": "user", "content": "Say hi"}]]
    out = rollout(prompts, None)
    required = {"prompt_ids", "completion_ids", "logprobs"}
    assert required <= set(out), out.keys()
    for key, value in out.items():
        assert isinstance(value, list) and len(value) == len(prompts), key
    llm_tokens = 0
    for p, c, lp, m in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"], out["env_mask"]):
        assert is_ids(p) and is_ids(c) and 0 < len(c) <= 10
        assert len(lp) == len(c) and all(isinstance(x, float) and x <= 0.0 for x in lp)
        assert len(m) == len(c) and set(m) <= {0, 1}
        llm_tokens += m.count(0)
    assert llm_tokens > 0, "the LLM wrote tokens, masked out with env_mask = 0"
    assert out["prompt_ids"][0] == out["prompt_ids"][1]
    served = [sum(c["served"] for c in calls) for calls in out["relay_calls"]]
    assert served == [m.count(0) for m in out["env_mask"]], (served, out["env_mask"])

    reward = make_reward_func(URL, api_key=KEY)
    completions = ["so \\boxed{4}", "\\boxed{5}", "hi"]
    extra = {k: v for k, v in out.items() if k not in required and k != "env_mask"}
    rewards = reward(prompts=prompts, completions=completions, answer=["4", "4", "hi"], **extra)
    assert len(rewards) == 3 and all(isinstance(r, float) for r in rewards), rewards


def test_verl():
    loop = RelayAgentLoop()
    loop.response_length = 12
    out = asyncio.run(
        loop.run({"temperature": 0.7, "top_p": 1.0}, raw_prompt=[{"role": "user", "content": "3+4?"}], relay=RELAY)
    )
    fields = {f.name for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out) else set(out.model_fields)
    assert {
        "prompt_ids",
        "response_ids",
        "response_mask",
        "response_logprobs",
        "reward_score",
        "num_turns",
        "metrics",
        "extra_fields",
    } <= fields, fields
    assert is_ids(out.prompt_ids) and is_ids(out.response_ids) and 0 < len(out.response_ids) <= 12
    assert len(out.response_mask) == len(out.response_ids) and set(out.response_mask) <= {0, 1}
    assert len(out.response_logprobs) == len(out.response_ids)
    assert out.metrics.generate_sequences > 0
    assert out.extra_fields["relay_llm_tokens"] == out.response_mask.count(0)
    scores = compute_score_batch(
        ["gsm8k"] * 3,
        ["\\boxed{7}", "<call>3</call>\\boxed{7}", "\\boxed{8}"],
        ["7", "7", "7"],
        [{"index": 0}, {"index": 0}, {"index": 1}],
    )
    # Group 0 is student-solvable: correct alone 1.5, correct with a call 1 - rho.
    assert scores[0] == 1.5 and 0.0 < scores[1] < 1.0, scores
    assert scores[2] == 0.0, "a lone wrong rollout of an unsolvable group, no call"


if __name__ == "__main__":
    for t in (test_client, test_trl, test_verl):
        t()
        print(f"ok {t.__name__}")
