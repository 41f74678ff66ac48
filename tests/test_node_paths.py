"""Every path a trial reads must be readable on every node of a cluster (issue 29): config fields declare
that they hold paths (``ReadPath``), one generic walk finds them in any method's section, and on a
cluster (a fake node count here: no Ray) a path of this machine is refused before any trial starts,
naming the key and what to pass instead. A folder every node mounts is declared as file://, which
the weight loaders read."""
from __future__ import annotations

import os
from typing import Annotated

import pytest
from pydantic import BaseModel

from fgray import provenance
from fgray.config import BackboneConfig, ConfigError, DataConfig, ExperimentConfig
from fgray.methods.registry import method_configs
from fgray.node_paths import PathField, ReadPath, local_path, names_path, node_local, path_problem, read_paths
from fgray.preflight import check_cluster, planned_experiments
from fgray.sweep_file import load_sweep

DEMO = "sweeps/demo.yaml"


def keys(config) -> dict[str, str]:
    return {field.key: field.value for field in read_paths(config)}


def refuse(sweep, why="2 nodes", shipped=False) -> str:
    with pytest.raises(ConfigError) as err:
        check_cluster("s3://bucket/results", planned_experiments(sweep), why, {}, "nodes", shipped=shipped)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_the_marked_fields_are_found_in_every_section(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    detector = tmp_path / "owl"
    detector.mkdir()
    (detector / "config.json").write_text("{}")
    dva = load_sweep("sweeps/dva_generalization.yaml", [f"backbone.pretrained={weights}", "method.boxes=detector",
                                                        f"method.detector.path={detector}"], None, deep=False)
    assert keys(dva) == {"data.root": "/data/fgray/cub200", "backbone.pretrained": str(weights),
                         "method.detector.path": str(detector), "eval.transfer[0].root": "/data/fgray/nabirds",
                         "eval.transfer[1].root": "/data/fgray/aircraft",
                         "eval.transfer[2].root": "/data/fgray/inat2021_100"}
    (tmp_path / "prompts.txt").write_text("\n".join(f"a photo of a bird, kind {i}" for i in range(8)))
    ppssl = load_sweep("sweeps/ppssl_text.yaml", [f"method.teacher.pretrained={weights}",
                                                  f"method.corpus={tmp_path / 'prompts.txt'}"], None, deep=False)
    assert keys(ppssl)["method.teacher.pretrained"] == str(weights)
    assert keys(ppssl)["method.corpus"] == str(tmp_path / "prompts.txt")
    ass = load_sweep("sweeps/ass_lambda.yaml", [f"method.selector.weights={weights}"], None, deep=False)
    assert keys(ass)["method.selector.weights"] == str(weights)
    oldfs = load_sweep("sweeps/oldfs_demo.yaml", ["method.decoder.weights=s3://bucket/decoder.pth"], None, deep=False)
    assert keys(oldfs)["method.decoder.weights"] == "s3://bucket/decoder.pth"


def test_tags_flags_and_the_synthetic_cache_name_no_path(tmp_path):
    # openai / hub / random / true are tags; a local synthetic root is rendered on each node.
    assert keys(load_sweep("sweeps/ppssl_alpha_beta.yaml", ["data.root=s3://b/cub"], None, deep=False)) == {
        "data.root": "s3://b/cub"}
    assert keys(load_sweep("sweeps/ass_lambda.yaml", ["data.root=s3://b/cub"], None, deep=False)) == {
        "data.root": "s3://b/cub"}
    assert keys(DataConfig(root=str(tmp_path))) == {}
    assert keys(DataConfig(name="cub200", root=str(tmp_path))) == {"root": str(tmp_path)}
    assert not any(names_path(v) for v in ("openai", "hub", "random", "laion2b_s34b_b79k", True, None, ""))
    assert all(names_path(v) for v in ("/w.pth", "~/w", "./w", "w.safetensors", "s3://b/w", "file:///m/w"))


class _Inner(BaseModel):
    weights: Annotated[str, ReadPath(uri=False)] = "hub"


class _Holder(BaseModel):
    plain: str = "/not/marked"
    marked: dict[str, _Inner] = {}


def test_the_walk_needs_the_marker_not_a_name():
    holder = _Holder(marked={"a": _Inner(weights="/x/y.pt"), "b": _Inner()})
    assert [(f.key, f.value) for f in read_paths(holder)] == [("marked.a.weights", "/x/y.pt")]


@pytest.mark.parametrize("name", sorted(method_configs()))
def test_every_method_field_that_holds_a_path_is_marked(name):
    """A method config's string fields named like a path are marked: a new one is checked on a cluster
    without the sweep code knowing it."""
    suspects = ("path", "weights", "pretrained", "root", "corpus", "file", "folder", "dir")

    def unmarked(model: type[BaseModel], prefix: str) -> list[str]:
        found = []
        for field_name, field in model.model_fields.items():
            annotation = field.annotation
            nested = [a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            for inner in nested:
                found += unmarked(inner, f"{prefix}{field_name}.")
            holds_text = "str" in str(annotation)
            marked = any(isinstance(m, ReadPath) for m in field.metadata)
            if holds_text and any(s in field_name for s in suspects) and not marked:
                found.append(prefix + field_name)
        return found

    assert unmarked(method_configs()[name], "method.") == []


def test_a_local_data_root_is_refused_on_a_cluster_with_what_to_pass():
    sweep = load_sweep("sweeps/ppssl_alpha_beta.yaml", [], None, deep=False)
    message = refuse(sweep)
    assert message.startswith("data.root: /data/fgray/cub200 is a folder of this machine, but the sweep runs on a "
                              "cluster (2 nodes): pass --set data.root=s3://BUCKET/PREFIX")
    assert "python -m fgray.data prepare" in message and "file:///" in message


@pytest.mark.parametrize("root", ["s3://bucket/fgray/cub200", "gs://bucket/cub200", "file:///shared/cub200"])
def test_uris_and_declared_mounts_pass(root):
    sweep = load_sweep("sweeps/ppssl_alpha_beta.yaml", [f"data.root={root}"], None, deep=False)
    check_cluster("s3://bucket/results", planned_experiments(sweep), "2 nodes", {}, "nodes")


def test_on_one_machine_nothing_is_refused(tmp_path):
    sweep = load_sweep("sweeps/ppssl_alpha_beta.yaml", [], None, deep=False)
    check_cluster(str(tmp_path), planned_experiments(sweep), None, {}, "nodes")


@pytest.mark.parametrize("nodes,sets,refused", [
    (1, (), False),
    (2, (), True),
    (1, ("resources.driver_resources={TRAIN_DRIVER: 1}", "resources.train_in_trial=false"), True),
    (1, ("resources.gpus_per_worker=1",), True),
])
def test_the_rule_is_the_storage_checks(nodes, sets, refused):
    sweep = load_sweep(DEMO, ["data.name=cub200", "data.root=/data/cub", *sets], None, deep=False)
    why = provenance.cluster_reason(sweep, nodes, 0)
    problem = path_problem(sweep.experiment({}, deep=False), why)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("data.root: /data/cub is a folder of this machine")


def test_weights_are_refused_with_a_bucket_or_a_mount_to_copy_them_to(tmp_path):
    weights = tmp_path / "selector.pth"
    weights.write_bytes(b"0")
    sweep = load_sweep("sweeps/ass_lambda.yaml", ["data.root=s3://b/cub", f"method.selector.weights={weights}"],
                       None, deep=False)
    message = refuse(sweep, why="GPU workers the cluster does not have yet")
    assert message.startswith(f"method.selector.weights: {weights} is a file of this machine")
    assert "pass --set method.selector.weights=s3://BUCKET/PREFIX/selector.pth (upload it with `aws s3 cp`" in message
    assert "or file:///shared/mount/... for a folder every node mounts" in message


def test_a_row_that_names_its_own_root_is_named():
    sweep = load_sweep("sweeps/dva_main.yaml", ["data.root=s3://b/cub"], None, deep=False)
    assert refuse(sweep).startswith("trial 1 (data.name=cub200, data.root=/data/fgray/cub200, data.protocol=open): "
                                    "data.root: /data/fgray/cub200 is a folder")


def test_a_transfer_root_is_refused_by_its_index():
    sweep = load_sweep("sweeps/dva_generalization.yaml", ["data.root=s3://b/cub", "search.points=[]"], None,
                       deep=False)
    assert refuse(sweep).startswith("eval.transfer[0].root: /data/fgray/nabirds is a folder")


def test_a_relative_path_travels_with_a_jobs_working_directory():
    field = PathField("method.corpus", "sweeps/prompts.txt", ReadPath(uri=False))
    assert node_local(field) and not node_local(field, shipped=True)
    assert node_local(PathField("data.root", "/data/cub", ReadPath()), shipped=True)
    assert node_local(PathField("data.root", "../cub", ReadPath()), shipped=True)


def test_file_uris_name_local_paths(tmp_path):
    assert local_path("file:///shared/w.pth") == "/shared/w.pth"
    assert local_path("~/w.pth") == os.path.expanduser("~/w.pth")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    assert BackboneConfig(pretrained=f"file://{weights}").pretrained == f"file://{weights}"
    with pytest.raises(ValueError, match="weights file not found"):
        BackboneConfig(pretrained=f"file://{tmp_path}/missing.pth")


def test_a_mounted_checkpoint_folder_stays_declared_shared(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    assert BackboneConfig(pretrained=f"file://{tmp_path}").pretrained == f"file://{tmp_path}"
    assert BackboneConfig(pretrained=str(tmp_path)).pretrained == str(tmp_path)


def test_a_backbone_loads_weights_from_a_file_uri(tmp_path):
    import timm
    import torch

    from fgray.models.backbone import build_backbone

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = build_backbone("test_resnet", f"file://{tmp_path / 'w.pth'}")
    first = next(iter(source.state_dict()))
    assert torch.equal(loaded.model.state_dict()[first], source.state_dict()[first])


def test_a_detector_folder_may_be_a_declared_mount(tmp_path):
    from fgray.data.inputs import DetectorSpec

    (tmp_path / "config.json").write_text("{}")
    assert DetectorSpec(path=f"file://{tmp_path}").path == f"file://{tmp_path}"  # a bucket: test_weights_uri


def test_experiments_keep_their_marks_through_validation():
    experiment = ExperimentConfig(method={"name": "mocov2"}, data={"name": "cub200", "root": "/d/cub"})
    assert keys(experiment) == {"data.root": "/d/cub"}
