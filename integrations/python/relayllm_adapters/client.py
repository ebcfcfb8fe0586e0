"""A small HTTP client for relayllm's native endpoints (standard library only)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any, Optional

_CALL = re.compile(r"<call>\s*(\d+)\s*</call>")


class RelayError(RuntimeError):
    """The server answered with an error (its OpenAI-style message is kept)."""


def parse_calls(text: str) -> list[int]:
    """The ``n`` of every well-formed call command in a response's text, in order."""
    return [int(m.group(1)) for m in _CALL.finditer(text)]


class RelayClient:
    """``RelayClient("http://127.0.0.1:8080", api_key=None)``."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - any unreadable body
                msg = str(e)
            raise RelayError(f"{path}: HTTP {e.code}: {msg}") from None

    def tokenize(self, messages: Optional[list[dict]] = None, prompt: Optional[str] = None) -> list[int]:
        """Prompt ids as the server's SLM reads them (chat template applied to ``messages``)."""
        body = {"messages": messages} if messages is not None else {"prompt": prompt}
        return self._post("/tokenize", body)["tokens"]

    def generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        relay: Optional[dict[str, Any]] = None,
    ) -> dict[str, Any]:
        """One relay rollout: ``ids``, ``source_mask`` (1 = LLM-written), ``slm_logprobs``
        (null at LLM positions), ``calls``, ``text``, ``finish_reason``, ``trace``."""
        body: dict[str, Any] = {
            "prompt_ids": prompt_ids,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        if relay:
            body["relay"] = relay
        return self._post("/relay/generate", body)

    def sync_weights(self, path: str, model: str = "slm") -> dict[str, Any]:
        """Has the server load new weights for ``model`` from ``path`` (absolute, on the
        server's machine: a ``save_pretrained`` folder or a ``.gguf``) and serve them to the
        requests that start after this returns. ``{"model", "version", "path", "load_s"}``;
        rollouts report the versions they ran on in ``weights_versions``. Needs
        ``relayllm serve --allow-weight-sync``; weights of another shape are refused (HTTP
        422, the old ones stay) with a :class:`RelayError`."""
        return self._post("/admin/weights", {"model": model, "path": path})

    def grade(self, gold: str, pred: str, mode: str = "mathruler") -> bool:
        return bool(self._post("/grade", {"gold": gold, "pred": pred, "mode": mode})["correct"])

    def reward_group(
        self, rollouts: list[dict[str, Any]], reward: str = "difficulty", rho: str = "requested"
    ) -> dict[str, Any]:
        """``rollouts``: ``[{"correct", "calls": [{"requested_n", "served"}], "response_tokens"}]``
        → ``{"scenario", "rewards"}``."""
        return self._post("/reward/group", {"rollouts": rollouts, "reward": reward, "rho": rho})


def sync_weights(
    base_url: str,
    path: str,
    model: str = "slm",
    api_key: Optional[str] = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """``RelayClient(base_url, api_key).sync_weights(path, model)``: push a trainer's current
    policy (saved to ``path``) to ``relayllm serve`` before a rollout batch. The path is read
    by the server, so it must be absolute and visible there (same machine, shared disk)."""
    return RelayClient(base_url, api_key, timeout).sync_weights(path, model)
