"""fgray uses Ray's public APIs: no private module, no deprecated argument, and Ray's DeveloperAPIs (which
have no public equivalent) only through ``fgray/ray_compat.py``; a Ray deprecation fails the tests. No Ray
is started here."""
from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

FGRAY = Path(__file__).resolve().parents[1] / "fgray"
# Ray's private modules, map_batches' concurrency= (deprecated in 2.51: compute=ActorPoolStrategy), from_blocks
# (DeveloperAPI) and read_parquet's columns= (deprecated: select_columns).
PRIVATE_OR_DEPRECATED = re.compile(r"(^|[^_a-z])concurrency=|\.from_blocks\(|(^|[^a-z])ray\._[a-z]|"
                                   r"read_parquet\([^)]*columns=")
# Ray's DeveloperAPIs fgray needs (in code: dotted names and imports): ray_compat wraps each.
DEVELOPER_APIS = re.compile(r"^ray\.(cluster_resources|available_resources|nodes)$|DataContext|\.?context\."
                            r"execution_options|TuneReportCallback|^ray\.util\.metrics")


def _sources():
    return sorted(FGRAY.rglob("*.py"))


def test_fgray_uses_no_private_or_deprecated_ray_api():
    found = [f"{path.relative_to(FGRAY.parent)}:{n}: {line.strip()}" for path in _sources()
             for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_OR_DEPRECATED.search(line)]
    assert not found, "\n".join(found)


def _dotted_names(tree: ast.AST):
    """(line, name) of every dotted name (``ray.data.DataContext.get_current``) and import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name):
                parts.append(inner.id)
            yield node.lineno, ".".join(reversed(parts))
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def test_ray_developer_apis_only_through_ray_compat():
    found = sorted({f"{path.relative_to(FGRAY.parent)}:{line}: {name}" for path in _sources()
                    if path.name != "ray_compat.py"
                    for line, name in _dotted_names(ast.parse(path.read_text())) if DEVELOPER_APIS.search(name)})
    assert not found, "\n".join(found)


@pytest.fixture
def no_ray(monkeypatch):
    """A Ray API that gets past its deprecation warning would start a local Ray: refuse it instead."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("this test must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)


def test_a_ray_deprecation_fails_the_tests(no_ray, tmp_path):
    from ray.util.annotations import Deprecated, RayDeprecationWarning

    # Ray's own marker of a deprecated API (pyproject.toml's filterwarnings turn it into an error) ...
    @Deprecated(message="use new() instead", warning=True)
    def old():
        return 1

    with pytest.raises(RayDeprecationWarning):
        old()
    # ... and a Ray Data argument deprecated with a plain DeprecationWarning at its caller: an error too.
    import ray.data

    with pytest.raises(DeprecationWarning, match="columns="):
        ray.data.read_parquet(str(tmp_path), columns=["image_id"])


def test_deprecations_inside_third_party_libraries_stay_quiet():
    # The warning filters by the module a deprecation is attributed to: fgray's fail, a library's own do not.
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("x is deprecated", DeprecationWarning, "pipeline.py", 1, module="fgray.data.pipeline")
    warnings.warn_explicit("y is deprecated", DeprecationWarning, "functional.py", 1, module="torch.functional")
