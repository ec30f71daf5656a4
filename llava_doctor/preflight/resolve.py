"""Resolve what a launch names - hub ids and paths - to local folders, offline, the way transformers does.

``from_pretrained(name)`` takes a local directory when ``name`` is one (relative to the process's
working directory); otherwise it looks in the Hugging Face cache: ``$HF_HUB_CACHE`` (also the older
``HUGGINGFACE_HUB_CACHE`` / ``TRANSFORMERS_CACHE``), else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``, where a repository lives in
``models--{org}--{name}`` and the revision ``main`` is the commit named by ``refs/main``, its files
in ``snapshots/<commit>/``. ``--cache_dir`` given to train.py replaces the cache for the model.
``--map ID=DIR`` states the folder outright. Nothing is downloaded; what is not found is reported.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..files import MAX_JSON_BYTES, read_json, read_text
from ..findings import InputError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Resolved:
    """A name from the launch and the local folder or file it stands for (path None when not found)."""

    value: str
    path: str | None
    how: str  # "local path", "--map", "HF cache <dir> (refs/main = abc1234)", or why it was not found
    found: bool

    @property
    def missing_local(self) -> bool:
        """It names a local path (not a hub id) that does not exist: from_pretrained fails at launch."""
        return not self.found and self.how.startswith("no such")


def hub_cache(env: Mapping[str, str]) -> str:
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        if env.get(key):
            return os.path.expanduser(env[key])
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "huggingface", "hub")


def parse_maps(items: Any) -> dict[str, str]:
    """`ID=DIR` strings -> {ID: DIR}; InputError for a malformed one."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--map {item!r}: expected ID=DIR (e.g. --map lmsys/vicuna-7b-v1.5=./models/vicuna)")
        out[key.strip()] = os.path.expanduser(value.strip())
    return out


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.sep in value and value.count("/") > 1 or value.endswith(
        (".json", ".bin", ".pt", ".pth", ".safetensors", ".yaml", ".yml"))


def _snapshot(cache: str, repo_id: str) -> tuple[str | None, str]:
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    if not os.path.isdir(folder):
        return None, f"not in the HF cache {cache}"
    try:
        commit = read_text(os.path.join(folder, "refs", "main"), limit=256, what="refs file").strip()
    except InputError:
        return None, f"{folder} has no refs/main (an incomplete download?)"
    if not COMMIT.match(commit):
        return None, f"{folder}/refs/main does not hold a commit hash"
    snapshot = os.path.join(folder, "snapshots", commit)
    if not os.path.isdir(snapshot):
        return None, f"{folder}: refs/main names snapshot {commit[:7]}, which is missing"
    return snapshot, f"HF cache {folder} (refs/main = {commit[:7]})"


def resolve(value: str | None, *, workdir: str, env: Mapping[str, str], maps: Mapping[str, str],
            cache_dir: str | None = None, hub: bool = True) -> Resolved | None:
    """Where `value` (a --model_name_or_path / --vision_tower ...) is on this machine."""
    if value is None or value == "":
        return None
    if value in maps:
        path = maps[value] if os.path.isabs(maps[value]) else os.path.abspath(maps[value])
        return Resolved(value, path, "--map", os.path.exists(path)) if os.path.exists(path) else Resolved(
            value, None, f"no such file or directory: --map {value}={maps[value]}", False)
    local = os.path.expanduser(value)
    local = local if os.path.isabs(local) else os.path.join(workdir, local)
    if os.path.exists(local):
        return Resolved(value, os.path.normpath(local), "local path", True)
    if not hub or looks_like_path(value) or not REPO_ID.match(value):
        return Resolved(value, None, f"no such file or directory: {local}", False)
    caches = [cache_dir] if cache_dir else []
    caches.append(hub_cache(env))
    reasons = []
    for cache in caches:
        cache = cache if os.path.isabs(cache) else os.path.join(workdir, cache)
        path, how = _snapshot(cache, value)
        if path:
            return Resolved(value, path, how, True)
        reasons.append(how)
    return Resolved(value, None, "; ".join(reasons) + " (no download is attempted; pass --map "
                    f"{value}=DIR)", False)


def read_config(folder: str | None) -> tuple[dict | None, str | None]:
    """(config.json of a model folder, why not) - bounded, regular files only."""
    if not folder:
        return None, None
    if not os.path.isdir(folder):
        return None, f"{folder} is not a folder"
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return None, f"{folder} has no config.json"
    try:
        return read_json(path, limit=MAX_JSON_BYTES, what="config.json"), None
    except InputError as exc:
        return None, str(exc)
