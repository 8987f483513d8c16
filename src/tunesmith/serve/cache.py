"""Answers to deterministic requests (temperature 0, or a fixed seed), kept for repeats: a
bounded LRU with a time to live. A hit is answered without touching the model."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from typing import Any


class ResponseCache:
    def __init__(self, size: int, ttl_seconds: float, clock=time.monotonic) -> None:
        self.size, self.ttl, self.clock = size, ttl_seconds, clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(route: str, model: str, request: dict[str, Any]) -> str:
        """The same request to the same model: the body without what does not change the answer."""
        body = {k: v for k, v in request.items() if k not in ("stream", "user", "model")}
        text = json.dumps([route, model, body], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            found = self._items.get(key)
            if found is None or self.clock() - found[0] > self.ttl:
                if found is not None:
                    del self._items[key]
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found[1]

    def put(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = (self.clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
