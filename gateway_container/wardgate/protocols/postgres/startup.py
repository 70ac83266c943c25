"""Which startup parameters a client may pass through the gateway, and agent context from them.

A startup parameter is a session setting applied before any statement is seen, so it would bypass the
per-statement policy: only well-known harmless settings pass; anything else is refused by name.
Agent context travels in ``options`` as ``-c wardgate.<key>=<value>`` (e.g. ``wardgate.run_id``,
``wardgate.model``, ``wardgate.prompt_hash``); it is recorded and never forwarded.
"""

from __future__ import annotations

# GUCs a client may set at startup, lower-cased (PostgreSQL compares GUC names case-insensitively).
PASSTHROUGH_SETTINGS = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone", "intervalstyle",
    "extra_float_digits", "search_path", "statement_timeout", "lock_timeout",
    "idle_in_transaction_session_timeout", "default_transaction_read_only",
    "default_transaction_isolation", "bytea_output", "standard_conforming_strings",
})
# Parameters the gateway itself consumes.
GATEWAY_PARAMETERS = frozenset({"user", "database", "options"})
AGENT_PREFIX = "wardgate."
_UTF8_NAMES = frozenset({"UTF8", "UNICODE"})


class StartupRefused(Exception):
    def __init__(self, message: str, sqlstate: str = "42501"):
        super().__init__(message)
        self.sqlstate = sqlstate


def split_options(options: str) -> list[tuple[str, str]]:
    """Parse a libpq ``options`` string (``-c a=b --c=d``, backslash escapes spaces) into pairs."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            setting = words[index + 1]
            index += 2
        elif word.startswith("--"):
            setting = word[2:]
            index += 1
        elif word.startswith("-c") and len(word) > 2:
            setting = word[2:]
            index += 1
        else:
            raise StartupRefused(f"startup option {word!r} is not allowed through wardgate")
        name, sep, value = setting.partition("=")
        if not sep:
            raise StartupRefused(f"startup option {setting!r} has no value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def filter_startup(parameters: dict[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Split client startup parameters into (forwarded settings, agent context, protocol options
    the gateway does not recognise). Raises :class:`StartupRefused` for anything not allowed."""
    forwarded: dict[str, str] = {}
    agent: dict[str, str] = {}
    unrecognized: list[str] = []
    settings: list[tuple[str, str]] = []
    for key, value in parameters.items():
        if key.startswith("_pq_."):
            unrecognized.append(key)
        elif key == "options":
            settings.extend(split_options(value))
        elif key == "replication":
            raise StartupRefused("replication connections are not served by wardgate")
        elif key not in GATEWAY_PARAMETERS:
            settings.append((key, value))
    options: list[str] = []
    for name, value in settings:
        if name.lower() == "client_encoding" and value.strip("'\"").replace("-", "").replace("_", "").upper() not in _UTF8_NAMES:
            # Statements are decided on their UTF-8 reading; another encoding could make the backend
            # read different text from what the policy saw.
            raise StartupRefused(f"client_encoding {value!r} is not supported through wardgate: use UTF8",
                                 "22021")
        lowered = name.lower()
        if lowered.startswith(AGENT_PREFIX):
            agent[lowered[len(AGENT_PREFIX):]] = value
        elif lowered in PASSTHROUGH_SETTINGS:
            if name in parameters:
                forwarded[name] = value
            else:
                options.append(f"-c {name}={_escape(value)}")
        else:
            raise StartupRefused(
                f"startup setting {name!r} is not allowed through wardgate; "
                f"allowed: {', '.join(sorted(PASSTHROUGH_SETTINGS))}"
            )
    if options:
        forwarded["options"] = " ".join(options)
    return forwarded, agent, unrecognized


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")
