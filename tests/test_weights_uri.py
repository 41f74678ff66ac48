"""Weights named by an object-store URI (``fgray.weights_uri``): a backbone's weights file, checkpoint or
sweep output folder, the CLIP teacher's file, ASS's selector, a saved detector folder and a corpus file
in a bucket (moto's local S3 server, ``s3_bucket``) load as their local originals do; each node keeps
one copy, reused while the bucket's object is the same; a missing object is one line naming its key;
and on a cluster a URI passes where a path of one machine is refused. No Ray."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import timm
import torch

from fgray import checkpoint as ckpt
from fgray import storage, weights_uri
from fgray.config import BackboneConfig, ConfigError, ExperimentConfig
from fgray.data.inputs import DatasetFacts, DetectorSpec
from fgray.methods.configs import PPSSLConfig, TeacherConfig
from fgray.methods.configs_ass import ASSConfig, SelectorConfig
from fgray.models.backbone import build_backbone
from fgray.preflight import check_cluster, planned_experiments
from fgray.sweep_file import load_sweep
from fgray.validation import validate
from fgray.weights_uri import local_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def node_cache(tmp_path, monkeypatch):
    """Each test its own node cache: what one test copies, another does not find."""
    monkeypatch.setenv("FGRAY_CACHE", str(tmp_path / "node-cache"))
    return tmp_path / "node-cache" / "weights"


def upload(local, uri: str) -> str:
    """A local file or folder (recursively) to ``uri``."""
    fs, inner = storage.filesystem(uri)
    if os.path.isdir(local):
        pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    else:
        storage.write_bytes(uri, Path(local).read_bytes())
    return uri


def resnet_weights(path, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()
    torch.save(state, path)
    return state


def same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def saved_checkpoint(folder) -> dict[str, torch.Tensor]:
    """An fgray checkpoint of a MoCo v2 run on test_resnet; returns its online backbone's weights."""
    from fgray.engine import build_method

    exp = validate(ExperimentConfig, {"method": {"name": "mocov2", "queue_size": 64, "proj_dim": 16,
                                                 "hidden_dim": 32}, "backbone": {"name": "test_resnet"}})
    torch.manual_seed(5)
    method = build_method(exp, DatasetFacts(num_classes=5, image_size=64))
    ckpt.save(str(folder), method, exp, DatasetFacts(num_classes=5, image_size=64), "train", 2, {})
    return method.moco.backbone.state_dict()


# ------------------------------------------------------------------------------------------ backbone


def test_a_backbone_loads_exactly_the_weights_in_the_bucket(s3_bucket, tmp_path):
    state = resnet_weights(tmp_path / "w.pth")
    uri = upload(tmp_path / "w.pth", f"{s3_bucket}/backbone/w.pth")
    assert BackboneConfig(name="test_resnet", pretrained=uri).pretrained == uri
    assert same(build_backbone("test_resnet", uri).model.state_dict(), state)


def test_the_nodes_copy_is_reused_then_refreshed_when_the_object_changes(s3_bucket, tmp_path, monkeypatch,
                                                                          node_cache):
    resnet_weights(tmp_path / "w.pth")
    uri = upload(tmp_path / "w.pth", f"{s3_bucket}/reuse/w.pth")
    local = local_weights(uri)
    assert local.startswith(str(node_cache)) and os.path.basename(local) == "w.pth"
    assert Path(local).read_bytes() == (tmp_path / "w.pth").read_bytes()
    copies = []
    real_copy = weights_uri._copy
    monkeypatch.setattr(weights_uri, "_copy", lambda *args: copies.append(args) or real_copy(*args))
    assert local_weights(uri) == local and copies == []  # no download: size and time match the bucket's
    torch.save({"other": torch.zeros(3)}, tmp_path / "v2.pth")
    upload(tmp_path / "v2.pth", uri)  # re-uploaded: its size and time differ
    assert local_weights(uri) == local and len(copies) == 1
    assert Path(local).read_bytes() == (tmp_path / "v2.pth").read_bytes()
    assert [n for n in os.listdir(os.path.dirname(local)) if n.startswith(".")] == [".lock"]  # no temporaries
    assert local_weights(f"file://{tmp_path}/w.pth") == f"{tmp_path}/w.pth"  # a mount: read where it is
    assert local_weights("~/w.pth") == os.path.expanduser("~/w.pth")


def test_processes_of_one_node_copying_at_once_share_one_whole_folder(s3_bucket, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(1 << 16))
    uri = upload(folder, f"{s3_bucket}/race/model")
    copies = []
    real_copy = weights_uri._copy
    monkeypatch.setattr(weights_uri, "_copy", lambda *args: copies.append(args) or real_copy(*args))
    found: list[str] = []
    threads = [threading.Thread(target=lambda: found.append(local_weights(uri))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found) == 4
    local = found[0]
    assert (Path(local) / "sub" / "weights.bin").read_bytes() == (folder / "sub" / "weights.bin").read_bytes()
    assert sorted(os.listdir(os.path.dirname(local))) == [".lock", "model"]
    assert len(copies) == 2  # its two files, copied once: the other callers waited on the lock and reused them


def test_a_store_that_cannot_be_asked_is_one_line_at_the_start_and_retried_in_a_trial(monkeypatch):
    # At the sweep's start (the deep pass) an outage is the key's one line; in a trial's schema-only pass
    # it stays an OSError, which Tune retries, not a ConfigError, which would end the trial as its settings'.
    def unreachable(uri):
        raise OSError("When getting information for key 'w.pth': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(weights_uri.storage, "filesystem", unreachable)
    config = {"method": {"name": "mocov2"}, "backbone": {"name": "test_resnet", "pretrained": "s3://b/w.pth"}}
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig, config)
    assert str(err.value) == ("backbone.pretrained: s3://b/w.pth cannot be read (When getting information for "
                              "key 'w.pth': AWS Error NETWORK_CONNECTION)")
    with pytest.raises(weights_uri.StoreUnreachable):
        validate(ExperimentConfig, config, deep=False)


def test_a_checkpoint_or_sweep_folder_in_the_bucket_warm_starts_the_backbone(s3_bucket, tmp_path):
    theirs = saved_checkpoint(tmp_path / "checkpoint_000002")
    checkpoint = upload(tmp_path / "checkpoint_000002", f"{s3_bucket}/results/s/train-t1/checkpoint_000002")
    assert BackboneConfig(name="test_resnet", pretrained=checkpoint).pretrained == checkpoint
    assert same(build_backbone("test_resnet", checkpoint).state_dict(), theirs)
    # a sweep's output folder in the bucket: its summary names the best trial's checkpoint, as a URI
    summary = {"best": "t1", "trials": [{"trial_id": "t1", "checkpoint": checkpoint}]}
    storage.write_bytes(f"{s3_bucket}/results/s/summary.json", json.dumps(summary).encode())
    assert BackboneConfig(name="test_resnet", pretrained=f"{s3_bucket}/results/s").pretrained == checkpoint


def test_a_missing_object_is_one_line_naming_the_key(s3_bucket):
    missing = f"{s3_bucket}/nowhere/w.pth"
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig, {"method": {"name": "mocov2"},
                                    "backbone": {"name": "test_resnet", "pretrained": missing}}, deep=False)
    assert str(err.value).startswith(f"backbone.pretrained: weights file not found: {missing} (nor an fgray")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        local_weights(missing)


# --------------------------------------------------------------------------- the other weights fields


def test_a_clip_teacher_loads_its_weights_file_from_the_bucket(s3_bucket, tmp_path):
    from fgray.models.clip import TINY_MODEL, CLIPTeacher, build_clip, check_weights

    source, _ = build_clip(TeacherConfig(model=TINY_MODEL, pretrained="random", seed=7))
    torch.save(source.state_dict(), tmp_path / "tiny.pt")
    uri = upload(tmp_path / "tiny.pt", f"{s3_bucket}/clip/tiny.pt")
    cfg = TeacherConfig(model=TINY_MODEL, pretrained=uri, seed=123)  # another init seed: the file decides
    check_weights(cfg)
    assert same(CLIPTeacher(cfg).model.state_dict(), source.state_dict())
    with pytest.raises(ConfigError) as err:
        check_weights(TeacherConfig(model=TINY_MODEL, pretrained=f"{s3_bucket}/clip/missing.pt"))
    assert "\n" not in str(err.value) and str(err.value).startswith("method.teacher.pretrained: CLIP weights file "
                                                                    f"not found: fgray looked for {s3_bucket}")


def test_a_corpus_file_is_read_from_the_bucket(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/corpus/prompts.txt", b"# birds\na bird\n\na dog\na car\n")
    assert PPSSLConfig(corpus=f"{s3_bucket}/corpus/prompts.txt", corpus_size=2).prompts == ("a bird", "a dog")
    with pytest.raises(ValueError, match="corpus file not found"):
        PPSSLConfig(corpus=f"{s3_bucket}/corpus/missing.txt")


def test_an_ass_selector_in_the_bucket_is_a_weights_file_or_a_checkpoint(s3_bucket, tmp_path):
    from fgray.methods.ass import ASS

    resnet_weights(tmp_path / "w.pth")
    weights = upload(tmp_path / "w.pth", f"{s3_bucket}/selector/w.pth")
    assert SelectorConfig(weights=weights).encoder().kind == "timm"
    saved_checkpoint(tmp_path / "checkpoint_000001")
    folder = upload(tmp_path / "checkpoint_000001", f"{s3_bucket}/selector/checkpoint_000001")
    assert SelectorConfig(weights=folder).encoder().kind == "fgray"
    ASS.preflight(ASSConfig(selector=SelectorConfig(weights=folder)))
    with pytest.raises(ConfigError) as err:
        ASS.preflight(ASSConfig(selector=SelectorConfig(weights=f"{s3_bucket}/selector/missing")))
    assert "\n" not in str(err.value) and str(err.value).startswith("method.selector.weights: no file or checkpoint "
                                                                    f"folder at {s3_bucket}/selector/missing")


def test_a_saved_detector_folder_in_the_bucket_is_copied_whole_and_loads(s3_bucket, tmp_path):
    from test_detect import BATCH, save_tiny_owlv2  # the tiny OWLv2 test_detect runs

    from fgray.data.frozen.detect import DetectActor

    save_tiny_owlv2(str(tmp_path / "owl"))
    uri = upload(tmp_path / "owl", f"{s3_bucket}/detector/owl")
    spec = DetectorSpec(path=uri, box_threshold=0.0)
    assert sorted(os.listdir(local_weights(uri))) == sorted(os.listdir(tmp_path / "owl"))
    ours = DetectActor(spec)(BATCH)
    theirs = DetectActor(DetectorSpec(path=str(tmp_path / "owl"), box_threshold=0.0))(BATCH)
    assert (ours["bbox"] == theirs["bbox"]).all() and (ours["score"] == theirs["score"]).all()
    with pytest.raises(ValueError, match="no saved detector in s3://fgray-test/detector/none"):
        DetectorSpec(path=f"{s3_bucket}/detector/none")


def test_the_embedding_cache_digests_a_bucket_object_by_its_content(s3_bucket, tmp_path):
    from fgray.data.frozen.embedding_cache import weights_digest

    resnet_weights(tmp_path / "w.pth", seed=2)
    uri = upload(tmp_path / "w.pth", f"{s3_bucket}/digest/w.pth")
    assert weights_digest(uri) == weights_digest(str(tmp_path / "w.pth"))


# ----------------------------------------------------------------------------------------- cluster


def test_on_a_cluster_a_bucket_passes_and_a_local_file_is_refused_with_a_bucket_to_use(s3_bucket, tmp_path):
    resnet_weights(tmp_path / "w.pth")
    uri = upload(tmp_path / "w.pth", f"{s3_bucket}/cluster/w.pth")
    sweep = load_sweep("sweeps/demo.yaml", ["data.name=cub200", "data.root=s3://b/cub",
                                            f"backbone.pretrained={uri}"], None, deep=False)
    check_cluster("s3://bucket/results", planned_experiments(sweep), "2 nodes", {}, "nodes")
    local = load_sweep("sweeps/demo.yaml", ["data.name=cub200", "data.root=s3://b/cub",
                                            f"backbone.pretrained={tmp_path / 'w.pth'}"], None, deep=False)
    with pytest.raises(ConfigError) as err:
        check_cluster("s3://bucket/results", planned_experiments(local), "2 nodes", {}, "nodes")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"backbone.pretrained: {tmp_path / 'w.pth'} is a file of this machine, but "
                                     "the sweep runs on a cluster (2 nodes): pass --set "
                                     "backbone.pretrained=s3://BUCKET/PREFIX/w.pth (upload it with `aws s3 cp`")
