"""What makes two vLLM servers different (:class:`ServerSpec`): the model, the release and how it is served.

Its own module so that both the process side (server.py) and the launch side (runtime/, runtime/docker.py)
can read it without importing each other; everything imports it from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSpec:
    """Everything that makes two servers different. Tests with equal specs share one server."""

    model: str  # registry name
    model_path: str  # local directory or hub id handed to --model
    version: str
    distribution: str
    device: str  # "cpu" | "cuda"
    serve_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    trust_remote_code: bool = False
    gpus: int = 0  # devices to lease (cuda)
    label: str = ""  # human hint for the key, e.g. "xgrammar"

    @property
    def key(self) -> str:
        payload = json.dumps([self.model, self.model_path, self.version, self.distribution, self.device,
                              list(self.serve_args), list(self.env), self.trust_remote_code, self.gpus])
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        label = f"-{self.label}" if self.label else ""
        return f"{self.model}-{self.distribution}-{self.version}{label}-{digest}"

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)
