"""The official openai client against a running relay server (URL in argv[1], API key argv[2]).

Run by crates/relay-server/tests/openai_client.rs, which starts the server on tiny models.
"""
import sys

import openai

url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)

ids = [m.id for m in client.models.list().data]
assert ids == ["relay", "slm", "llm"], ids

msgs = [{"role": "user", "content": "What is 2+2?"}]
relay = {"relay": {"policy": "confidence", "threshold": 1.0, "call_tokens": 3, "cooldown": 2}}
whole = client.chat.completions.create(model="relay", messages=msgs, max_tokens=24, temperature=0, extra_body=relay)
text = whole.choices[0].message.content
assert whole.usage.completion_tokens == whole.usage.slm_tokens + whole.usage.llm_tokens, whole.usage
assert whole.usage.llm_tokens > 0

parts, sources, usage = [], set(), None
for chunk in client.chat.completions.create(model="relay", messages=msgs, max_tokens=24, temperature=0, stream=True, extra_body=relay):
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
            sources.add(c.delta.model_extra["source"])
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == text, ("".join(parts), text)
assert "llm" in sources, sources
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens

comp = client.completions.create(model="slm", prompt="2+2=", max_tokens=8)
assert isinstance(comp.choices[0].text, str) and comp.usage.llm_tokens == 0

try:
    client.chat.completions.create(model="gpt-9", messages=msgs)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.chat.completions.create(model="relay", messages=msgs, temperature=7)
    raise AssertionError("temperature 7 accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body
try:
    openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError:
    pass
print("openai client: ok")
