"""The sweep's start: the synthetic set rendered by a forked process while the checks that load timm
run beside Ray's start, and what a failed check leaves behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from fgray.sweep import main

DEMO = "sweeps/demo.yaml"


def test_the_synthetic_set_renders_in_a_forked_process_and_a_prepared_one_is_read_later(tmp_path):
    # In a fresh interpreter, as the CLI runs it (no Ray in the process yet).
    script = (
        "import json\n"
        "from fgray.config import DataConfig\n"
        "from fgray.startup import render_ahead\n"
        "data = DataConfig(name='synthetic', image_size=32, synthetic={'num_classes': 4, 'images_per_class': 3})\n"
        "prepared = render_ahead(data).result()\n"
        "print(json.dumps([prepared.root, prepared.manifest.num_images,"
        " render_ahead(DataConfig(name='cub', root='/nowhere')) is None]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "FGRAY_CACHE": str(tmp_path)}).stdout
    root, images, prepared_later = json.loads(out.strip().splitlines()[-1])
    assert root.startswith(str(tmp_path)) and images == 12 and prepared_later
    assert os.path.exists(os.path.join(root, "manifest.json"))


def test_a_model_name_found_beside_rays_start_is_one_line_and_leaves_a_running_ray_up(ray_local, tmp_path, capsys):
    # The timm check runs while Ray starts; a failure is the usual one line and exit 2, and a Ray this
    # process did not start (here the tests', as a cluster's under `ray job submit`) stays up.
    code = main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "backbone.name=no_such_net"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: backbone.name: unknown timm model 'no_such_net'"]
    assert ray_local.is_initialized() and not list(tmp_path.iterdir())


def test_the_end_line_counts_from_the_commands_start():
    # The console's "done in N s" was measured from after Ray's start (42 s printed after 53.5 s of
    # wall): it must count what happened before fgray.sweep ran too (here a 1.5 s wait).
    script = ("import time\ntime.sleep(1.5)\nfrom fgray.sweep import command_started\n"
              "print(time.time() - command_started())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert 1.5 <= float(out.stdout.strip()) < 30
