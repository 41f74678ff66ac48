"""Config fields that name a file or folder a trial (or the sweep) reads, and the check that every node
of a cluster can read them.

A field declares it with the ``ReadPath`` marker in its type: ``root: Annotated[str | None, ReadPath()]``.
``read_paths`` walks a validated config (any pydantic model, the method's section included) and lists
the marked fields whose value names a path, by key path (``method.teacher.pretrained``,
``eval.transfer[0].root``): the sweep checks them without knowing any method or field by name.

On a cluster, a path of one machine names nothing on the others: a trial on a GPU worker would fail
(a data root, at its first read) or, worse, find another copy there. So, as results storage
(``provenance.check_shared_storage``), such a path is refused before any trial starts; what every
node reads is a URI (``s3://``, ``gs://``) or a folder every node mounts, which a user declares as
``file:///shared/mount/...``. Weights and saved models (a weights file, a checkpoint or detector
folder, a corpus file) are URIs too: ``fgray.weights_uri.local_weights`` copies one once per node into
its cache for the loaders, which open files. A relative path inside a job's working directory
(``ray job submit --working-dir .``) travels with the job to every node. Imports no Ray, torch or
pyarrow: the config modules use the marker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pydantic import BaseModel

FILE_SCHEME = "file://"
# What a weights value ends with when it names a file (open_clip's and timm's usual files).
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".txt", ".json")
# ReadPath.how of weights fields: how a file or folder gets into a bucket, and what each node does with it.
WEIGHTS_HOW = ("upload it with `aws s3 cp` (--recursive for a folder); each node copies it once into "
               "$FGRAY_CACHE/weights")


class StoreUnreachable(OSError):
    """The store could not be asked (no credentials, no network, an outage): one line naming the URI and
    the cause. An OSError, not a ValueError, on purpose: raised in a trial's config validation it passes
    through pydantic as itself, so Tune retries the trial (a ConfigError would end it as a settings
    failure); where the sweep starts (``validation.validate``'s deep pass, the methods' preflights) it is one line."""


@dataclass(frozen=True)
class ReadPath:
    """``Annotated`` marker of a config field whose value may name a file or folder that is read where
    the config is used (a trial's node). ``uri``: an object-store URI works: pyarrow reads it (prepared
    shards), or ``fgray.weights_uri`` copies it to the node for a loader that opens files (weights, a
    saved detector); False: only a file of a mount every node has (``file:///...``) works on a cluster
    (no field today). ``per_node``: the config section -> whether each node makes its own copy of a
    local path (the built-in synthetic set, rendered where read). ``how``: how to put the thing there,
    for the refusal's line."""

    uri: bool = True
    per_node: Callable[[Any], bool] | None = None
    how: str = ""


@dataclass(frozen=True)
class PathField:
    """A marked field's value that names a path: ``key`` its key path, ``value`` as given."""

    key: str
    value: str
    marker: ReadPath


def is_uri(value: str) -> bool:
    return "://" in value


def is_object_store(value: str) -> bool:
    """A URI of a store no node mounts (``s3://``, ``gs://``), as opposed to a declared mount (``file://``)."""
    return is_uri(value) and not value.startswith((FILE_SCHEME, "local://"))


def local_path(value: str) -> str:
    """The file-system path a value names: ``file:///x`` -> ``/x`` (a folder every node mounts, declared
    so), ``~`` expanded. Loaders of weights take ``fgray.weights_uri.local_weights``, which also copies an
    object-store URI to the node."""
    if value.startswith(FILE_SCHEME):
        value = value[len(FILE_SCHEME):]
    return os.path.expanduser(value)


def names_path(value: Any) -> bool:
    """Whether a marked field's value names a file or folder rather than a tag (``openai``, ``hub``,
    ``random``, ``true``): a URI, a value with a folder part, one starting with ``~`` or ``.``, one ending
    like a weights or text file, or one that exists here."""
    if not isinstance(value, str) or not value:
        return False
    return (is_uri(value) or "/" in value or os.sep in value or value.startswith(("~", "."))
            or value.endswith(WEIGHT_SUFFIXES) or os.path.exists(value))


def read_paths(section: BaseModel, prefix: str = "") -> list[PathField]:
    """Every ``ReadPath``-marked field of ``section`` (and the sections inside it) whose value names a
    path, except local paths each node makes itself (``ReadPath.per_node``)."""
    return list(_walk(section, prefix))


def _walk(section: BaseModel, prefix: str) -> Iterator[PathField]:
    for name, field in type(section).model_fields.items():
        value, key = getattr(section, name), f"{prefix}{name}"
        marker = next((m for m in field.metadata if isinstance(m, ReadPath)), None)
        if marker is not None and names_path(value):
            if is_uri(value) or marker.per_node is None or not marker.per_node(section):
                yield PathField(key, value, marker)
        yield from _inside(value, key)


def _inside(value: Any, key: str) -> Iterator[PathField]:
    if isinstance(value, BaseModel):
        yield from _walk(value, f"{key}.")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _inside(item, f"{key}[{i}]")
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _inside(item, f"{key}.{name}")


def node_local(field: PathField, shipped: bool = False) -> bool:
    """Whether ``field`` names a path of this machine only: not a URI (``file://`` declares a shared
    mount) and, when ``shipped`` (a job's working directory goes to every node), not a relative path
    inside it."""
    if is_uri(field.value):
        return False
    inside = not os.path.isabs(field.value) and not field.value.startswith(("~", ".."))
    return not (shipped and inside)


def refusal(field: PathField, why: str) -> str:
    """The one-line refusal of a node-local ``field`` on a cluster (``why``: what makes it one)."""
    is_file = os.path.isfile(local_path(field.value))
    where = "a file" if is_file else "a folder"
    how = f" ({field.marker.how})" if field.marker.how else ""
    name = f"/{os.path.basename(field.value)}" if is_file else ""  # a file keeps its name in the bucket
    instead = (f"pass --set {field.key}=s3://BUCKET/PREFIX{name}{how}, or file:///shared/mount/... for a "
               f"folder every node mounts" if field.marker.uri else
               f"copy it to a folder every node mounts and pass --set {field.key}=file:///shared/mount/...{how}")
    return f"{field.key}: {field.value} is {where} of this machine, but the sweep runs on a cluster ({why}): {instead}"


def path_problem(config: BaseModel, why: str | None, shipped: bool = False) -> str | None:
    """The refusal of ``config``'s first node-local path when ``why`` says the sweep runs on a cluster
    (``provenance.cluster_reason``), else None (on one machine every path is this machine's)."""
    if why is None:
        return None
    return next((refusal(field, why) for field in read_paths(config) if node_local(field, shipped)), None)
