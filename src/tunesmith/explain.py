"""Other libraries' errors in tunesmith's words: the one place where pydantic's validation
messages, a path that cannot be opened, a damaged file's library error and the staging paths of
a transaction become what a user reads (what is wrong, what was expected, the fix). No class
name or library sentence passes through.

    validation_problem(item)      # a pydantic error dict -> "expected a number (got 'fast')"
    path_problem(path)            # why a path cannot be read (a dangling link, a loop ...), and the fix
    json_problem(error)           # a JSONDecodeError -> "not valid JSON at column 42: a ',' is missing ..."
    connection_problem(error)     # a driver's or client's failure -> "nothing listens at that host and port"
    shown_path(path)              # a relative path with where it was looked for
    scrub(text)                   # runs/x/.staging/ab12/data -> runs/x/data
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

_BOUNDS = {"greater_than": "must be greater than {gt}", "greater_than_equal": "must be at least {ge}",
           "less_than": "must be less than {lt}", "less_than_equal": "must be at most {le}",
           "too_short": "needs at least {min_length} item(s)",
           "too_long": "takes at most {max_length} item(s)"}
_EXPECTED = {
    "float_parsing": "expected a number", "float_type": "expected a number",
    "int_parsing": "expected a whole number", "int_type": "expected a whole number",
    "int_from_float": "expected a whole number", "bool_parsing": "expected true or false",
    "bool_type": "expected true or false", "string_type": "expected text (quote it if YAML reads it "
    "as something else)", "list_type": "expected a list, e.g. [a, b]",
    "dict_type": "expected a mapping of keys to values, e.g. {key: value}",
    "model_type": "expected a section of keys (key: value, indented under it)",
    "model_attributes_type": "expected a section of keys (key: value, indented under it)",
    "finite_number": "must be a finite number (not .inf or .nan)",
    "missing": "missing (required)",
    "none_required": "takes no value",
}
_CLASS_NAME = re.compile(r"\s*or instance of \w+|\b\w+(Config|Spec|Rule)\b")


def validation_problem(item: dict[str, Any]) -> str:
    """What one pydantic error means, in tunesmith's words, with the value given."""
    kind, given, ctx = item["type"], item.get("input"), item.get("ctx") or {}
    if kind in ("model_type", "model_attributes_type", "dict_type") and given is None:
        return ("the section is empty: give it keys (indented under it), or delete the line to take the "
                "defaults")
    if kind in ("literal_error", "enum"):
        text = f"expected one of {ctx.get('expected', '')}"
    elif kind in _BOUNDS:
        text = _BOUNDS[kind].format(**{k: _plain(v) for k, v in ctx.items()})
    elif kind in _EXPECTED:
        text = _EXPECTED[kind]
    else:
        text = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        text = text.removeprefix("Assertion failed, ")
        text = text.replace("Input should be", "expected")
    text = _CLASS_NAME.sub("", text).strip()
    if kind == "missing" or isinstance(given, dict):  # a whole section would bury the message
        return text
    return f"{text} (got {given!r})"


_JSON_CAUSES = (
    ("Expecting ',' delimiter", "a ',' is missing between two items"),
    ("Expecting ':' delimiter", "a ':' is missing after a key"),
    ("Expecting property name", "a key is not in double quotes, or a ',' is left before a '}'"),
    ("Expecting value", "a value is missing (an empty line, a ',' left before a ']', or text that is not "
                        "JSON)"),
    ("Unterminated string", "a string is not closed (a '\"' is missing)"),
    ("Extra data", "something follows the JSON value (two objects on one line?)"),
    ("Invalid control character", "a raw tab or line break inside a string (write it as \\t or \\n)"),
    ("Invalid \\escape", "a backslash that starts no escape (write \\\\ for a backslash)"),
    ("Invalid \\u", "a broken \\uXXXX escape"),
)


def json_problem(error: Any) -> str:
    """A json.JSONDecodeError as where on its line and what is wrong: `not valid JSON at column 42:
    a ',' is missing between two items`."""
    cause = next((ours for theirs, ours in _JSON_CAUSES if error.msg.startswith(theirs)), "malformed JSON")
    return f"not valid JSON at column {error.colno}: {cause}"


_CONNECTION = (
    ("connection refused", "nothing listens at that host and port (connection refused)"),
    ("could not translate host name", "the host name does not resolve"),
    ("name or service not known", "the host name does not resolve"),
    ("nodename nor servname", "the host name does not resolve"),
    ("timed out", "no answer in time"), ("timeout", "no answer in time"),
    ("password authentication failed", "the server refused the user name or password"),
    ("does not exist", "the database does not exist on that server"),
    ("can't load plugin", "an unknown database scheme (use postgresql://, mysql:// or sqlite:///)"),
    ("no module named", "its database driver is not installed"),
    ("ssl", "the TLS handshake failed"),
    ("max retries exceeded", "nothing answers at that address"),
)


def connection_problem(error: BaseException, otherwise: str = "the server could not be reached") -> str:
    """Why a server (a database, a tracker, a judge) could not be used, in words: refused, no
    such host, a timeout, bad credentials, an unknown scheme; never the driver's own text.
    `otherwise` when the cause is none of these."""
    text = " ".join(str(error).split()).lower() + " " + type(error).__name__.lower()
    return next((ours for theirs, ours in _CONNECTION if theirs in text), otherwise)


def words(name: str) -> str:
    """A class name as words: EvalSummary -> eval summary."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown_path(path: str | Path) -> str:
    """The path as given; a relative one with the absolute path it was looked for at."""
    path = Path(path)
    return str(path) if path.is_absolute() else f"{path} (looked for at {Path.cwd() / path})"


def _link_chain(path: Path) -> list[str]:
    chain, seen, current = [str(path)], {str(path)}, path
    while current.is_symlink():
        target = Path(os.readlink(current))
        current = target if target.is_absolute() else current.parent / target
        chain.append(str(current))
        if str(current) in seen:
            break
        seen.add(str(current))
    return chain


def _loop(path: Path, chain: list[str]) -> tuple[str, str]:
    return f"{path}: a loop of symbolic links ({' -> '.join(chain)})", "Point the link at a file."


def path_problem(path: str | Path) -> tuple[str, str | None] | None:
    """Why `path` cannot be read (None when it can), and the fix where the path alone tells it:
    a loop of links, a link to nothing, not found (with where it was looked for; the caller
    knows where the path came from, so the fix is its), no permission."""
    path = Path(path)
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return _loop(path, _link_chain(path))
        except OSError as error:
            chain = _link_chain(path)
            if error.errno == errno.ELOOP or len(set(chain)) < len(chain):
                return _loop(path, chain)
            return (f"{path}: a symbolic link to {chain[-1]}, which does not exist",
                    "Point the link at the file, or use the file's own path.")
    if not path.exists():
        return f"{shown_path(path)}: file not found", None
    if not os.access(path, os.R_OK):
        return f"{path}: no permission to read it", "Give your user read access (chmod +r)."
    return None


_STAGING = (re.compile(r"/\.staging/[\w-]+"), re.compile(r"(?<![\w/])\.staging/[\w-]+/"))


def scrub(text: str) -> str:
    """A transaction's staging view named as the run itself: the staging directory is gone by
    the time anyone reads the message."""
    for pattern in _STAGING:
        text = pattern.sub("", text)
    return text
