"""Can the tracking URI be used? One probe for the sweeps and the report, and the one `redact`.

`check_reachable` fails fast and clearly: MLflow retries an HTTP server for minutes, and
silently creates an empty store for a mistyped sqlite path. A sweep creates its store, so only
the report (`existing_store=True`) insists that a local store exists already.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tracking.layout import DEFAULT_TRACKING_URI

HEALTH_PATH = "/health"
TIMEOUT_S = 5.0
ANSWERED = (401, 403)
"""Statuses that still mean a server answered: /health behind authentication. Credentials are
MLflow's to send (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN), and its to report when they fail."""
HOW = ("start it (`mlflow server --host 127.0.0.1 --port 5000`), or pass --tracking-uri "
       f"(default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")


class TrackingError(RuntimeError):
    """A tracking problem the user must fix (the message says how): an unreachable server, a
    missing store, an unknown experiment."""


class TrackingUnreachable(TrackingError):
    """The tracking URI cannot be used."""


def redact(url: str) -> str:
    """A URL fit to print or log: the password, if any, replaced by ***. Pass database and
    server passwords through the environment (e.g. PGPASSWORD, MLFLOW_TRACKING_PASSWORD) so that
    logged URLs still work."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:  # unparsable (e.g. a bad IPv6 host): mask whatever sits between ':' and '@'
        return re.sub(r"(//[^/@:]*:)[^/]*@", r"\1***@", url)
    if not password:
        return url
    # The user name holds no ':', so the first ':<password>@' after '://' is the userinfo's.
    head, sep, rest = url.partition("://")
    return head + sep + rest.replace(f":{password}@", ":***@", 1)


def sqlite_path(url: str) -> str:
    """The file behind a `sqlite:///` URL ('' for anything else or an in-memory database)."""
    path = url[len("sqlite:///"):].split("?")[0] if url.startswith("sqlite:///") else ""
    return "" if path == ":memory:" else path


def probe_server(uri: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """GET `<uri>/health`: (True, what answered) when an MLflow server answered (200, or 401/403
    behind authentication); (False, why not) for a closed port, an unknown host, a timeout, or
    any other status (a 5xx of the server or of a proxy in front of a dead one, a 404 of
    something that is no MLflow server)."""
    url = uri.rstrip("/") + HEALTH_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, f"{response.status} on {HEALTH_PATH}"
    except urllib.error.HTTPError as exc:  # before URLError: it is one
        exc.close()
        answer = f"{exc.code} {exc.reason} on {HEALTH_PATH}".replace("  ", " ")
        return exc.code in ANSWERED, answer
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc) or type(exc).__name__)


def check_reachable(uri: str, *, existing_store: bool = False, timeout: float = TIMEOUT_S) -> None:
    """Raise TrackingUnreachable unless `uri` can be used: an http(s) server must answer its
    health check; with `existing_store`, a sqlite database or a file store must exist already.
    Other schemes (databricks, ...) are left to MLflow."""
    parts = urllib.parse.urlsplit(uri)
    shown = redact(uri)
    if parts.scheme in ("http", "https"):
        answered, what = probe_server(uri, timeout)
        if answered:
            return
        if what[:3].isdigit():
            raise TrackingUnreachable(f"the MLflow tracking server at {shown} answered {what}; check the server "
                                      f"(and its log), or pass --tracking-uri (default: $MLFLOW_TRACKING_URI, "
                                      f"else {DEFAULT_TRACKING_URI})")
        raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {shown} ({what}); {HOW}")
    if not existing_store:
        return
    if parts.scheme == "sqlite":
        path = sqlite_path(uri)
        if path and not Path(path).is_file():
            raise TrackingUnreachable(f"no MLflow store at {Path(path).resolve()} (tracking URI {shown}); pass "
                                      f"--tracking-uri or set MLFLOW_TRACKING_URI")
    elif parts.scheme in ("", "file"):
        path = parts.path if parts.scheme else uri
        if not Path(path).is_dir():
            raise TrackingUnreachable(f"no MLflow file store at {path} (tracking URI {shown}); pass "
                                      f"--tracking-uri or set MLFLOW_TRACKING_URI")
