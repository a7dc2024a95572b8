"""The Hugging Face Hub, asked only when it can answer.

With no network and no HF_HUB_OFFLINE, `datasets` retries for half a minute or more before it fails
(GLUE without GLUE_DIR), and so does transformers for each file it looks up. One short probe of the
endpoint first lets prunekit fail at once (GLUE data) or look in the cache only (the index check before
from_pretrained, weights.py). With HF_HUB_OFFLINE=1 the libraries answer from their caches at once
and no probe is made. (A model name given to prunekit.load_model goes to huggingface_hub's
snapshot_download, which fails at once and falls back to its cache by itself.)
"""
import threading

PROBE_SECONDS = 3.0  # a reachable hub answers within a second; a resolver with no network can hang far longer


def offline() -> bool:
    """HF_HUB_OFFLINE is set: the caches answer, nothing goes to the network."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def unreachable(timeout: float = PROBE_SECONDS) -> str | None:
    """None when the hub endpoint answers an HTTP request (any status) within `timeout` seconds, else
    why not, in a few words. The request goes through huggingface_hub's own session (its proxies and
    endpoint) in a daemon thread, so a hanging name lookup cannot hold the caller past `timeout`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    outcome = {}

    def probe():
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            outcome["answered"] = True
        except Exception as e:  # any failure to get an answer means the same thing here
            outcome["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("answered"):
        return None
    return f"hub unreachable: {outcome.get('error') or f'no answer from {constants.ENDPOINT} in {timeout:g} s'}"
