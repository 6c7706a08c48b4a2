"""wandb's mode for a run, chosen without ever prompting, blocking or overriding the user.

The user's choice wins (``WANDB_MODE``, ``WANDB_DISABLED``, ``wandb offline``); otherwise a run logs
online only when an API key is configured and the server accepts it (one bounded request), else
offline with one warning line. `dfn.cli` calls `choose_wandb_mode` before it builds the logger.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlparse

import wandb


def _user_wandb_mode() -> str | None:
    """The mode a user chose outside this program: ``WANDB_MODE``, ``WANDB_DISABLED`` (which wandb itself
    no longer reads), or ``wandb offline/online/disabled`` (wandb's workspace and global settings files)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return "disabled"
    try:
        return wandb.Settings().read_system_settings().all().get("mode") or None
    except Exception:  # an unreadable settings file is wandb's to report, not ours
        return None


def _api_key(host: str) -> str | None:
    """``WANDB_API_KEY``, else the key `wandb login` stored in ~/.netrc (or ``$NETRC``) for `host`."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _key_verdict(base_url: str, key: str, timeout: float) -> str | None:
    """None when the server accepts `key`, else why not (one short phrase). One bounded request."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return f"the server rejected the API key (HTTP {err.code})" if err.code in (401, 403) else f"HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, timed out, not JSON
        return f"no answer ({type(err).__name__})"
    if not (answer.get("data") or {}).get("viewer"):
        return "the server did not accept the API key"
    return None


def choose_wandb_mode(timeout: float = 3.0) -> str:
    """Pick wandb's mode without ever prompting, blocking or overriding the user.

    The user's choice wins and is left as it is (``WANDB_MODE``, ``WANDB_DISABLED``, ``wandb offline``).
    Otherwise: online only when an API key is configured and the server accepts it within `timeout`
    seconds; a rejected key or a silent server gives offline with a one-line warning. Sets
    ``WANDB_MODE`` only in that last case (to the mode it picked).
    """
    chosen = _user_wandb_mode()
    if chosen:
        if chosen == "disabled" and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "disabled"  # WANDB_DISABLED: wandb 0.31 ignores the variable itself
        return chosen
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base_url).hostname or "api.wandb.ai"
    key = _api_key(host)
    mode = "offline"
    if key:
        problem = _key_verdict(base_url, key, timeout)
        if problem is None:
            mode = "online"
        else:
            print(f"dfn: wandb logs offline: {base_url}: {problem} (`wandb sync` uploads the run later)",
                  file=sys.stderr)
    os.environ["WANDB_MODE"] = mode
    return mode
