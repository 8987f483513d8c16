"""A reasoning model's answer split into `reasoning_content` and `content`, as OpenAI-compatible
servers (vLLM's reasoning parsers, DeepSeek's API) return it: the `<think>...</think>` block that
opens an answer is its reasoning, the text after it the content. Whole answers go through
`records.split_reasoning`; streamed ones through `ReasoningStream`, which holds back only what
could still be the start of a tag.
"""

from __future__ import annotations

from tunesmith.records import THINK_CLOSE, THINK_OPEN, split_reasoning


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an opened `<think>` (DeepSeek-R1's template does)."""
    return prompt.rstrip().endswith(THINK_OPEN)


def split_answer(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning_content, content) of a whole answer; reasoning None when it did not think."""
    reasoning, content = split_reasoning(text, opened)
    return reasoning, content.strip() if reasoning is not None else content


class ReasoningStream:
    """Feed an answer's pieces as they come; get (field, text) deltas: field is reasoning_content
    or content. `finish()` returns what was held back."""

    def __init__(self, opened: bool = False) -> None:
        self.mode = "reasoning" if opened else "start"  # start: not yet known whether it thinks
        self.held = ""
        self.after_close = False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.held += piece
        out: list[tuple[str, str]] = []
        while self.held:
            if self.mode == "start":
                stripped = self.held.lstrip()
                if THINK_OPEN.startswith(stripped):  # could still become <think>: wait
                    return out
                if stripped.startswith(THINK_OPEN):
                    self.mode, self.held = "reasoning", stripped[len(THINK_OPEN):].lstrip("\n")
                else:
                    self.mode = "content"
            elif self.mode == "reasoning":
                close = self.held.find(THINK_CLOSE)
                if close >= 0:
                    self._emit(out, "reasoning_content", self.held[:close].rstrip())
                    self.held = self.held[close + len(THINK_CLOSE):]
                    self.mode, self.after_close = "content", True
                    continue
                keep = _partial_tag(self.held, THINK_CLOSE)
                body = self.held[:len(self.held) - keep]
                keep += len(body) - len(body.rstrip())  # whitespace before a </think> is not sent
                self._emit(out, "reasoning_content", self.held[:len(self.held) - keep])
                self.held = self.held[len(self.held) - keep:]
                return out
            else:
                if self.after_close:  # the blank line between </think> and the answer
                    self.held = self.held.lstrip()
                    if not self.held:
                        return out
                    self.after_close = False
                self._emit(out, "content", self.held)
                self.held = ""
        return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.held:
            field = "reasoning_content" if self.mode == "reasoning" else "content"
            self._emit(out, field, self.held if field == "content" and not self.after_close
                       else self.held.strip())
        self.held = ""
        return out

    @staticmethod
    def _emit(out: list[tuple[str, str]], field: str, text: str) -> None:
        if text:
            out.append((field, text))


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag` (held back until known)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
