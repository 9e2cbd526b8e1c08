"""Registry credentials: read and written in the ``~/.docker/config.json`` ``auths`` format.

snapdiff keeps its own file, ``$XDG_CONFIG_HOME/snapdiff/auth.json`` (default
``~/.config/snapdiff/auth.json``, or ``$SNAPDIFF_AUTH_FILE``), and also reads the
``auths`` entries of ``~/.docker/config.json`` (or ``$DOCKER_CONFIG/config.json``), so
a ``docker login`` done before works.  An entry is ``{"auth": base64("user:pass")}``.
Credential helpers (``credsStore``) are not consulted.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from snapdiff.errors import RegistryError
from snapdiff.fsutil import atomic_write

__all__ = ["Credentials", "auth_file", "docker_config_file", "lookup", "store", "remove"]

# Docker Hub is keyed by this URL in docker's config, whatever host the API uses.
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password by accident
        return f"Credentials(username={self.username!r}, password=***)"


def auth_file() -> str:
    """Where ``snapdiff login`` stores credentials."""
    env = os.environ.get("SNAPDIFF_AUTH_FILE")
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "snapdiff", "auth.json")


def docker_config_file() -> str:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def _key(registry: str) -> str:
    return _DOCKER_HUB_KEY if registry in _DOCKER_HUB_HOSTS else registry


def _normalise(key: str) -> str:
    """``https://host:port/v1/`` and ``host:port`` name the same registry."""
    k = key
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix):]
    k = k.split("/", 1)[0]
    return "docker.io" if k in _DOCKER_HUB_HOSTS else k


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryError(f"read credentials '{path}': {e}") from e
    if not isinstance(data, dict):
        raise RegistryError(f"read credentials '{path}': not a JSON object")
    return data


def _decode(path: str, key: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"read credentials '{path}': entry '{key}': bad auth: {e}") from e
        if not sep:
            raise RegistryError(f"read credentials '{path}': entry '{key}': auth is not user:password")
        return Credentials(user, password)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def lookup(registry: str) -> Credentials | None:
    """The credentials for ``registry`` (``host[:port]``), snapdiff's file first, then docker's."""
    want = _normalise(registry)
    for path in (auth_file(), docker_config_file()):
        auths = _read(path).get("auths") or {}
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if _normalise(key) == want:
                creds = _decode(path, key, entry)
                if creds is not None:
                    return creds
    return None


def _write(path: str, data: dict) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def store(registry: str, creds: Credentials) -> str:
    """Save ``creds`` for ``registry`` in snapdiff's auth file (mode 0600); return its path."""
    path = auth_file()
    data = _read(path)
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if _normalise(k) == _normalise(registry)]:
        del auths[key]
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[_key(registry)] = {"auth": token}
    _write(path, data)
    return path


def remove(registry: str) -> bool:
    """Forget snapdiff's credentials for ``registry``; False if there were none."""
    path = auth_file()
    data = _read(path)
    auths = data.get("auths") or {}
    keys = [k for k in auths if _normalise(k) == _normalise(registry)]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write(path, data)
    return True
